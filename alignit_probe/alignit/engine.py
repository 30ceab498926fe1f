"""AlignIT on real pipelines: compute the infused K/V once per prompt, inject them, generate images.

Public API::

    akv = alignit_kv(pair, concepts, prompts, AlignITOptions())
    with alignit(pair, akv) as pipe:          # the denoising pipeline, with K/V injected
        images = pipe(prompt_embeds=akv.cond_embeds, generator=..., ...).images
    images, akv = generate_alignit(pair, concepts, prompts, options, seed=0)   # baseline / custom / alignit

SDXL: prompts and dummies go through both text encoders (the K/V are computed from their concatenated states, as
the UNet sees them). The pooled embedding conditions the UNet outside attn2, so AlignIT cannot infuse it per token:
``AlignITOptions.pooled`` chooses it — ``"baseline"`` (default: the baseline model's pooled embedding of the prompt
without the modifier, consistent with the context K/V) or ``"custom"`` (the customized model's, of the prompt).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

from ..arguments import as_ints, as_names
from ..capture.inject import inject_kv
from ..capture.sites import layout, record_kv, select_sites
from ..errors import ProbeError
from ..models.pipes import placement
from ..text.concepts import Concept, TokenizedPrompt, check_concepts_use_added, tokenize_prompts
from ..text.encoder import conditioning
from .generation import generate_images
from .plan import (
    DEFAULT_TEMPLATE,
    Plan,
    alignit_plan,
    blend,
    check_alpha,
    infuse_batch,
    infuse_index,
    infuse_stacked,
    partner_positions,
    partners_batch,
    tokenize_dummies,
)

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from ..models.load import ModelPair


@dataclass
class AlignITOptions:
    template: str = DEFAULT_TEMPLATE
    layers: list[str] | None = None
    blocks: list[str] | None = None
    resolutions: list[int] | None = None
    keys: bool = True
    values: bool = True
    alpha: float = 1.0
    denoiser: str = "custom"  # or "baseline"
    pooled: str = "baseline"  # SDXL's pooled embedding: the baseline's of the prompt without modifier, or "custom"
    end_tokens: str = "baseline"  # end token and padding: the baseline's (the paper), or "dummy": the customized
    # model's on the first concept's dummy prompt

    def __post_init__(self):  # one name for a list: blocks="up" is ["up"], never ["u", "p"]
        self.layers = as_names(self.layers, "layers")
        self.blocks = as_names(self.blocks, "blocks")
        self.resolutions = as_ints(self.resolutions, "resolutions")
        check_alpha(self.alpha)  # and the blocks, at once rather than when the options are used
        bad = [b for b in self.blocks or [] if b not in ("down", "mid", "up")]
        if bad:
            raise ProbeError(f"unknown block {bad[0]!r}", "use down, mid or up")


def options_dict(options: AlignITOptions, xl: bool) -> dict:
    """The options as stored and shown: ``pooled`` only for SDXL, the one model with a pooled embedding."""
    return {k: v for k, v in asdict(options).items() if xl or k != "pooled"}


def end_from(options: AlignITOptions, dummies: dict) -> int | None:
    """The concept whose dummy prompt gives the end token and padding (None: the baseline's)."""
    if options.end_tokens not in ("baseline", "dummy"):
        raise ProbeError(f"unknown end-token source {options.end_tokens!r}", "use --end-tokens baseline or dummy")
    return min(dummies) if options.end_tokens == "dummy" else None


@dataclass
class AlignITKV:
    plans: list[Plan]
    custom: list[TokenizedPrompt]
    baseline: list[TokenizedPrompt]
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]]  # attn2 path -> (K, V), each (prompt, token, inner_dim)
    cond_embeds: torch.Tensor  # what the denoising pipeline is conditioned on (its prompt_embeds)
    baseline_embeds: torch.Tensor
    custom_embeds: torch.Tensor
    options: AlignITOptions = field(default_factory=AlignITOptions)
    warnings: list[str] = field(default_factory=list)
    cond_pooled: torch.Tensor | None = None  # SDXL: the pooled embedding the AlignIT denoising gets
    baseline_pooled: torch.Tensor | None = None
    custom_pooled: torch.Tensor | None = None


def check_layouts(*unets: UNet2DConditionModel) -> None:
    first = layout(unets[0])
    if any(layout(u) != first for u in unets[1:]):
        raise ProbeError(
            "the models have different attn2 layouts (paths, heads or widths differ)",
            "use a customized model of the same architecture as the baseline",
        )


def denoiser_of(pair: ModelPair, options: AlignITOptions) -> StableDiffusionPipeline:
    if options.denoiser not in ("custom", "baseline"):
        raise ProbeError(f"unknown denoiser {options.denoiser!r}", "use custom or baseline")
    return pair.custom if options.denoiser == "custom" else pair.baseline


def check_pooled(options: AlignITOptions) -> None:
    if options.pooled not in ("baseline", "custom"):
        raise ProbeError(f"unknown pooled-embedding policy {options.pooled!r}", "use --pooled baseline or custom")


def validate(pair: ModelPair, concepts: list[Concept], options: AlignITOptions) -> None:
    """Every AlignIT option checked against the models, before any work is done."""
    check_alpha(options.alpha)
    check_pooled(options)
    check_concepts_use_added(pair.custom, pair.baseline.tokenizer, concepts, strict=pair.method == "textual_inversion")
    end_from(options, {0: None})
    check_layouts(pair.baseline.unet, pair.custom.unet)
    select_sites(denoiser_of(pair, options).unet, options.layers, options.blocks, options.resolutions)
    tokenize_dummies(pair.custom, pair.baseline.tokenizer, concepts, options.template)


def alignit_kv(
    pair: ModelPair,
    concepts: list[Concept],
    prompts: list[str],
    options: AlignITOptions | None = None,
    allow_absent: bool = False,
    first: int = 0,
) -> AlignITKV:
    """Infused K/V for every prompt and chosen attn2 layer (computed once; no denoising). Warnings number the
    prompts from ``first`` (a batch's global offset)."""
    options = options or AlignITOptions()
    check_alpha(options.alpha)
    check_pooled(options)
    if not (options.keys or options.values):
        raise ProbeError("neither keys nor values are infused", "infuse keys, values or both")
    check_layouts(pair.baseline.unet, pair.custom.unet)
    denoiser = denoiser_of(pair, options)
    sites = select_sites(denoiser.unet, options.layers, options.blocks, options.resolutions)
    ct, bt, warnings = tokenize_prompts(prompts, pair.custom, pair.baseline.tokenizer, concepts, allow_absent, first)
    dummies = tokenize_dummies(pair.custom, pair.baseline.tokenizer, concepts, options.template)
    plans = [alignit_plan(c, b, dummies, end_from(options, dummies)) for c, b in zip(ct, bt)]
    warnings += [
        f"prompt {k}: AlignIT sequence truncated by {p.dropped} token(s)"
        for k, p in enumerate(plans, first)
        if p.dropped
    ]
    base_c, base_pooled = conditioning(pair.baseline, bt)
    order = sorted(dummies)
    # the prompts and the dummies through the customized text encoder(s) in one batch
    both, both_pooled = conditioning(pair.custom, ct + [dummies[c] for c in order])
    custom_c, dummy_c = both[: len(ct)], both[len(ct) :]
    custom_pooled = None if both_pooled is None else both_pooled[: len(ct)]
    base_kv = record_kv(pair.baseline.unet, base_c, sites)
    # the customized model's own K/V of the prompt: for what is not infused, and for blending (alpha < 1)
    own_kv = not (options.keys and options.values and options.alpha == 1.0)
    custom_kv = record_kv(pair.custom.unet, custom_c, sites) if own_kv else {}
    dummy_kv = record_kv(pair.custom.unet, dummy_c, sites)
    device = placement(denoiser.unet)[0]
    index = infuse_index(plans, order, base_c.device)  # the same at every site: built once
    positions = partner_positions(plans, ct, custom_c.device) if own_kv else None
    kv = {} if own_kv else infuse_sites(base_kv, dummy_kv, sites, index, device)
    for path in sites if own_kv else []:
        out = []
        for which, use in ((0, options.keys), (1, options.values)):
            if use:
                dummy = {c: dummy_kv[path][which][i] for i, c in enumerate(order)}
                x = infuse_batch(plans, base_kv[path][which], dummy, index)
                if options.alpha != 1.0:
                    x = blend(x, *partners_batch(plans, ct, custom_kv[path][which], positions), options.alpha)
            else:
                x = partners_batch(plans, ct, custom_kv[path][which], positions)[0]
            out.append(x.to(device))
        kv[path] = (out[0], out[1])
    cond = custom_c if options.denoiser == "custom" else base_c
    pooled = custom_pooled if options.pooled == "custom" else base_pooled
    return AlignITKV(
        plans,
        ct,
        bt,
        kv,
        cond.to(device),
        base_c,
        custom_c,
        options,
        warnings,
        None if pooled is None else pooled.to(device),
        base_pooled,
        custom_pooled,
    )


def infuse_sites(
    base_kv: dict, dummy_kv: dict, sites: list[str], index: torch.Tensor, device: torch.device
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Infused K and V of every site (``plan.infuse_stacked``: the sites of one width at once, a few operations
    instead of a few per site: SDXL has 70)."""
    out: dict[str, list] = {path: [None, None] for path in sites}
    for which in (0, 1):
        widths: dict[int, list[str]] = {}
        for path in sites:
            widths.setdefault(base_kv[path][which].shape[-1], []).append(path)
        for group in widths.values():
            base = torch.stack([base_kv[p][which] for p in group])
            dummies = torch.stack([dummy_kv[p][which] for p in group])
            for path, x in zip(group, infuse_stacked(base, dummies, index).to(device).unbind(0)):
                out[path][which] = x
    return {path: (k, v) for path, (k, v) in out.items()}


@contextlib.contextmanager
def alignit(pair: ModelPair, akv: AlignITKV) -> Iterator[StableDiffusionPipeline]:
    """The denoising pipeline with AlignIT's K/V injected (condition it on ``prompt_embeds=akv.cond_embeds``; SDXL
    also ``pooled_prompt_embeds=akv.cond_pooled``)."""
    pipe = denoiser_of(pair, akv.options)
    with inject_kv(pipe.unet, akv.cond_embeds, akv.kv):
        yield pipe


def generate_alignit(
    pair: ModelPair,
    concepts: list[Concept],
    prompts: list[str],
    options: AlignITOptions | None = None,
    *,
    seed: int = 0,
    steps: int = 30,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    output_type: str = "pil",
    allow_absent: bool = False,
) -> tuple[dict[str, list], AlignITKV]:
    """Baseline, customized and AlignIT images with the same seed; returns (dict of image lists, AlignITKV)."""
    akv = alignit_kv(pair, concepts, prompts, options, allow_absent)
    kw = dict(
        seed=seed, steps=steps, guidance_scale=guidance_scale, height=height, width=width, output_type=output_type
    )
    images = {
        "baseline": generate_images(pair.baseline, akv.baseline_embeds, pooled_prompt_embeds=akv.baseline_pooled, **kw),
        "custom": generate_images(pair.custom, akv.custom_embeds, pooled_prompt_embeds=akv.custom_pooled, **kw),
    }
    with alignit(pair, akv) as pipe:
        images["alignit"] = generate_images(pipe, akv.cond_embeds, pooled_prompt_embeds=akv.cond_pooled, **kw)
    return images, akv
