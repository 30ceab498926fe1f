"""Which pipelines the toolkit works on, and their text encoders.

``StableDiffusionPipeline`` (SD1.x and SD2.x: one CLIP text encoder) and ``StableDiffusionXLPipeline`` (SDXL: two,
CLIP ViT-L and OpenCLIP bigG, whose penultimate hidden states are concatenated into the UNet's encoder states and
whose second one's projected pooled output conditions the UNet through its ``text_time`` embedding). Every text
encoder has a store group: ``text`` (the only one, or SDXL's first) and ``text_2`` (SDXL's second).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

SD = "StableDiffusionPipeline"
SDXL = "StableDiffusionXLPipeline"
SUPPORTED = (SD, SDXL)
TEXT, TEXT_2 = "text", "text_2"


def is_xl(pipe: StableDiffusionPipeline) -> bool:
    """Whether ``pipe`` has SDXL's second text encoder (and so a pooled text embedding)."""
    return getattr(pipe, "text_encoder_2", None) is not None


def text_encoders(pipe: StableDiffusionPipeline) -> list[tuple[str, object, object]]:
    """(store group, tokenizer, text encoder) of each text encoder, in the order the pipeline concatenates them."""
    out = [(TEXT, pipe.tokenizer, pipe.text_encoder)]
    if is_xl(pipe):
        out.append((TEXT_2, pipe.tokenizer_2, pipe.text_encoder_2))
    return out


def not_supported(model: str, cls: str | None) -> tuple[str, str]:
    """The message and fix of a ``ProbeError`` for a pipeline class this toolkit does not handle."""
    return (
        f"not supported: {model} is a {cls}",
        "alignit-probe works on Stable Diffusion 1.x/2.x (StableDiffusionPipeline) and SDXL "
        "(StableDiffusionXLPipeline) pipelines",
    )


def placement(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of a model's first parameter. diffusers' ``ModelMixin.device`` / ``.dtype`` look for
    group-offloading hooks through every submodule first: ~4 ms each on SDXL's UNet, paid per call in hot paths."""
    p = next(module.parameters())
    return p.device, p.dtype


TEXT_PARTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")


def text_copy(pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """A pipeline of ``pipe``'s class and configuration with its own copies of the text encoder(s), tokenizer(s)
    and scheduler, sharing every other component (the UNet, the VAE): the customized model of artifacts that only
    touch the text path (Textual Inversion), without a second UNet in memory (SDXL's: 5 GB in float16)."""
    return pipeline_copy(pipe, TEXT_PARTS)


def pipeline_copy(pipe: StableDiffusionPipeline, parts: tuple[str, ...]) -> StableDiffusionPipeline:
    """A pipeline of ``pipe``'s class and configuration with its own copies (``copy.deepcopy``: the same tensors,
    bit for bit, on the same device) of the components named in ``parts``, sharing every other one. What an
    artifact is applied to instead of a second load of the baseline from disk."""
    import copy

    components = dict(pipe.components)
    for name in parts:
        if components.get(name) is not None:
            components[name] = copy.deepcopy(components[name])
    config = {
        k: pipe.config[k]
        for k in ("requires_safety_checker", "force_zeros_for_empty_prompt")
        if k in pipe.config and k not in components
    }
    extra = {} if not is_xl(pipe) else {"add_watermarker": getattr(pipe, "watermark", None) is not None}
    out = type(pipe)(**components, **config, **extra)
    if "_name_or_path" in pipe.config:  # where it was loaded from
        out.register_to_config(_name_or_path=pipe.config["_name_or_path"])
    out.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return out
