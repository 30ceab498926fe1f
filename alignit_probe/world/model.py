"""The world model: a Stable-Diffusion-1.x-architecture pipeline pretrained on the toy world, shipped as one small
safetensors file.

Architecture (diffusers and transformers classes, so every loader, recorder, AlignIT and attention path runs on it
unchanged): the real CLIP tokenizer; a ``CLIPTextModel`` (64 wide, 3 layers, causal mask); a
``UNet2DConditionModel`` on 16×16×4 latents with cross-attention at 16×16, 8×8 and in the mid block; an
``AutoencoderKL`` with scale factor 2 (32×32 images); DDIM predicting v. Sampler settings: ``STEPS`` steps,
guidance ``GUIDANCE``.

The shipped file keeps, of the token-embedding matrix, only the rows the world's captions use; the other rows are
the seeded initial values (``untrained_embeddings``), which training never changes.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..models import toy
from ..models.toy import SCHEDULER_CONFIG, clip_tokenizer, save_pipeline
from .scenes import ATTRIBUTES, POSITION_WORDS

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

WEIGHTS_FILE = "world.safetensors"
STEPS = 10
GUIDANCE = 4.0
HEIGHT = WIDTH = 32
# the toy's SD1.x configs, wider: 64-wide text encoder, UNet widths 64/128, VAE widths 32/64
TEXT_CONFIG = dict(toy.TEXT_CONFIG, hidden_size=64, intermediate_size=256, projection_dim=64)
UNET_CONFIG = dict(toy.UNET_CONFIG, block_out_channels=(64, 128), cross_attention_dim=64)
VAE_CONFIG = dict(toy.VAE_CONFIG, block_out_channels=(32, 64), norm_num_groups=16)
EMBEDDING_SUFFIX = "token_embedding.weight"  # "text_model." in front in some transformers versions


def world_words() -> list[str]:
    """Every word the world's captions use."""
    words = {"a", "photo", "of", "on", "background"}
    for values in ATTRIBUTES.values():
        words.update(values)
    for phrase in POSITION_WORDS.values():
        words.update(phrase.split())
    return sorted(words)


def world_token_ids() -> list[int]:
    """The token ids of the world's words and of the start and end tokens (the rows training changes)."""
    tok = clip_tokenizer()
    ids = {tok.bos_token_id, tok.eos_token_id}
    for word in world_words():
        ids.update(tok(word, add_special_tokens=False).input_ids)
    return sorted(ids)


def untrained_embeddings(seed: int = 0) -> torch.Tensor:
    """The initial token-embedding matrix (vocabulary, width): normal(0, 0.02) from a seeded CPU generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(TEXT_CONFIG["vocab_size"], TEXT_CONFIG["hidden_size"], generator=gen) * 0.02


def world_components(seed: int = 0) -> dict:
    """Untrained modules of the world's architecture (seeded): text_encoder, unet, vae, tokenizer, scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight.copy_(untrained_embeddings(seed))
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**VAE_CONFIG)
    scheduler = DDIMScheduler(**dict(SCHEDULER_CONFIG, prediction_type="v_prediction"))
    return dict(text_encoder=text_encoder, unet=unet, vae=vae, tokenizer=clip_tokenizer(), scheduler=scheduler)


def assemble(components: dict) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` of the world's modules (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def weights_state(components: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata the shipped file holds: every module's weights in float16 with a module prefix,
    the token embedding as its trained rows plus their ids; the VAE's scaling factor in the metadata."""
    tensors = {}
    for name in ("text_encoder", "unet", "vae"):
        for key, value in components[name].state_dict().items():
            if name == "text_encoder" and key.endswith(EMBEDDING_SUFFIX):
                ids = torch.tensor(world_token_ids())
                tensors["text_encoder.embedding_rows.ids"] = ids
                tensors["text_encoder.embedding_rows.weight"] = value[ids].half()
                continue
            key = key.removeprefix("text_model.")  # transformers versions differ in this prefix
            tensors[f"{name}.{key}"] = value.half() if value.is_floating_point() else value
    meta = {"scaling_factor": str(components["vae"].config.scaling_factor)}
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, meta


def load_weights(components: dict, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict:
    """Put the shipped tensors into untrained ``components`` (in place, float32); returns them."""
    for name in ("text_encoder", "unet", "vae"):
        prefix = name + "."
        state = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        if name == "text_encoder":
            matrix = components[name].get_input_embeddings().weight.detach().clone()
            matrix[state.pop("embedding_rows.ids").long()] = state.pop("embedding_rows.weight")
            key = next(k for k in components[name].state_dict() if k.endswith(EMBEDDING_SUFFIX))
            state[key] = matrix
        own = {k.removeprefix("text_model."): k for k in components[name].state_dict()}
        state = {own.get(k, k): v for k, v in state.items()}
        missing, unexpected = components[name].load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "position_ids" not in m]:
            raise RuntimeError(f"world weights do not fit the {name}: missing {missing}, unexpected {unexpected}")
    components["vae"].register_to_config(scaling_factor=float(meta["scaling_factor"]))
    return components


def shipped_weights_path() -> Path:
    return Path(str(resources.files("alignit_probe.data").joinpath(WEIGHTS_FILE)))


def world_pipeline(weights: str | Path | None = None) -> StableDiffusionPipeline:
    """The pretrained world model as a ``StableDiffusionPipeline`` (float32, CPU, eval mode), from the shipped
    weights or from ``weights`` (a file written by ``world pretrain``)."""
    from safetensors import safe_open

    from ..errors import ProbeError

    path = Path(weights) if weights is not None else shipped_weights_path()
    if not path.is_file():
        raise ProbeError(f"world weights {path} not found", "pass a file written by `alignit-probe world pretrain`")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata() or {}
    components = load_weights(world_components(int(meta.get("seed", 0))), tensors, meta)
    pipe = assemble(components)
    for module in (pipe.text_encoder, pipe.unet, pipe.vae):
        module.eval().requires_grad_(False)
    return pipe


def world_info(weights: str | Path | None = None) -> dict:
    """The shipped file's metadata (version, recipe, validation accuracy)."""
    from safetensors import safe_open

    path = Path(weights) if weights is not None else shipped_weights_path()
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    return {k: (json.loads(v) if k in ("recipe", "accuracy") else v) for k, v in meta.items()}


def world_pipeline_dir(weights: str | Path | None = None) -> Path:
    """A diffusers folder of the world model (the shipped weights, or ``weights``), written once into the cache
    (``$ALIGNIT_PROBE_CACHE``, else ``~/.cache/alignit_probe``) under the weights' hash, so path-based loaders
    (artifacts applied to a baseline folder) can use it."""
    import hashlib
    import os
    import shutil

    path = Path(weights) if weights is not None else shipped_weights_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "missing"
    root = Path(os.environ.get("ALIGNIT_PROBE_CACHE") or Path.home() / ".cache" / "alignit_probe")
    out = root / f"world-{digest}"
    if not (out / "model_index.json").is_file():
        pipe = world_pipeline(path)
        tmp = root / f".world-{digest}.{os.getpid()}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        save_pipeline(pipe, tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out
