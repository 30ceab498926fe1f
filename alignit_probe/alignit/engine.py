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
from ..models.encoder import conditioning
from ..models.pipes import placement
from ..text.concepts import Concept, TokenizedPrompt, check_concepts_use_added, tokenize_prompts
from .generation import generate_images
from .plan import (
    BASELINE,
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


@dataclass(frozen=True)
class Encoded:
    """One model's encoding of a batch of tokenized prompts: the conditioning c (prompt, token, channel), the pooled
    embedding (SDXL) and the K/V at attn2 sites, as a recording pass computed them. ``alignit_kv`` takes them
    instead of encoding again, so AlignIT's context K/V are the very values recorded for the baseline."""

    tokenized: list[TokenizedPrompt]
    c: torch.Tensor
    pooled: torch.Tensor | None
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]]


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
    dummy: Encoded | None = None  # the dummy prompts' encoding (a later batch of the same job may reuse it)


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


def check_infusion(options: AlignITOptions) -> None:
    check_alpha(options.alpha)
    check_pooled(options)
    if not (options.keys or options.values):
        raise ProbeError("neither keys nor values are infused", "infuse keys, values or both")


def validate(pair: ModelPair, concepts: list[Concept], options: AlignITOptions) -> None:
    """Every AlignIT option checked against the models, before any work is done."""
    check_alpha(options.alpha)
    check_pooled(options)
    check_concepts_use_added(pair.custom, pair.baseline.tokenizer, concepts, strict=pair.method == "textual_inversion")
    end_from(options, {0: None})
    check_layouts(pair.baseline.unet, pair.custom.unet)
    select_sites(denoiser_of(pair, options).unet, options.layers, options.blocks, options.resolutions)
    tokenize_dummies(pair.custom, pair.baseline.tokenizer, concepts, options.template)


def encode(
    pipe: StableDiffusionPipeline, tokenized: list[TokenizedPrompt], sites: list[str], clip_skip: int | None = None
) -> Encoded:
    c, pooled = conditioning(pipe, tokenized, clip_skip)
    return Encoded(tokenized, c, pooled, record_kv(pipe.unet, c, sites))


def encoded_for(
    reused: Encoded | None,
    pipe: StableDiffusionPipeline,
    tokenized: list[TokenizedPrompt],
    sites: list[str],
    clip_skip: int | None,
) -> Encoded:
    """``reused`` where it encodes these very prompts at every site (else they are encoded here, in one batch of
    their own: the layout a plain encoding of the same prompts has)."""
    if reused is not None and [t.ids for t in reused.tokenized] == [t.ids for t in tokenized]:
        if all(s in reused.kv for s in sites):
            return Encoded(tokenized, reused.c, reused.pooled, {s: reused.kv[s] for s in sites})
    return encode(pipe, tokenized, sites, clip_skip)


def alignit_kv(
    pair: ModelPair,
    concepts: list[Concept],
    prompts: list[str],
    options: AlignITOptions | None = None,
    allow_absent: bool = False,
    first: int = 0,
    *,
    clip_skip: int | None = None,
    reuse: dict[str, Encoded] | None = None,
) -> AlignITKV:
    """Infused K/V for every prompt and chosen attn2 layer (computed once; no denoising). Warnings number the
    prompts from ``first`` (a batch's global offset). ``clip_skip``: as the baseline encodes (the customized
    model's prompts and dummies are encoded the same way). ``reuse``: ``{"baseline": Encoded, "custom": Encoded,
    "dummy": Encoded}`` from a recording pass (these prompts without the modifier, these prompts; the dummy prompts,
    ``AlignITKV.dummy`` of an earlier batch), each taken where it encodes the same token ids at every site.

    Every encoding is of one set of prompts in a batch of its own (the baseline's and the customized model's of
    the prompts, the dummies'), so what AlignIT keeps equals, bit for bit, what a plain encoding of the same prompts
    gives: the same matrix products over the same rows, whatever else shares a call."""
    options = options or AlignITOptions()
    check_infusion(options)
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
    reuse = reuse or {}
    base = encoded_for(reuse.get("baseline"), pair.baseline, bt, sites, clip_skip)
    # the customized model's own K/V of the prompt: for what is not infused, and for blending (alpha < 1)
    own_kv = not (options.keys and options.values and options.alpha == 1.0)
    custom = encoded_for(reuse.get("custom"), pair.custom, ct, sites if own_kv else [], clip_skip)
    order = sorted(dummies)
    dummy = encoded_for(reuse.get("dummy"), pair.custom, [dummies[c] for c in order], sites, clip_skip)
    device = placement(denoiser.unet)[0]
    index = infuse_index(plans, order, base.c.device)  # the same at every site: built once
    if own_kv:
        kv = partial_sites(plans, ct, (base, custom, dummy), order, index, options)
    else:
        kv = infuse_sites(base.kv, dummy.kv, sites, index)
    kv = {path: (k.to(device), v.to(device)) for path, (k, v) in kv.items()}
    cond = custom.c if options.denoiser == "custom" else base.c
    pooled = custom.pooled if options.pooled == "custom" else base.pooled
    return AlignITKV(
        plans,
        ct,
        bt,
        kv,
        cond.to(device),
        base.c,
        custom.c,
        options,
        warnings,
        None if pooled is None else pooled.to(device),
        base.pooled,
        custom.pooled,
        dummy,
    )


def partial_sites(
    plans: list[Plan],
    ct: list[TokenizedPrompt],
    encoded: tuple[Encoded, Encoded, Encoded],
    order: list[int],
    index: torch.Tensor,
    options: AlignITOptions,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """K/V where keys or values alone are infused, or blended with the customized model's own (``alpha`` < 1):
    site by site. ``encoded``: the baseline's, the customized model's and the dummies' encodings."""
    base, custom, dummy = encoded
    positions = partner_positions(plans, ct, custom.c.device)
    kv = {}
    for path in base.kv:
        out = []
        for which, use in ((0, options.keys), (1, options.values)):
            if use:
                x = infuse_batch(plans, base.kv[path][which], dict(zip(order, dummy.kv[path][which])), index)
                if options.alpha != 1.0:
                    x = blend(x, *partners_batch(plans, ct, custom.kv[path][which], positions), options.alpha)
            else:
                x = partners_batch(plans, ct, custom.kv[path][which], positions)[0]
            out.append(x)
        kv[path] = (out[0], out[1])
    return kv


def infuse_sites(
    base_kv: dict, dummy_kv: dict, sites: list[str], index: torch.Tensor
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
            for path, x in zip(group, infuse_stacked(base, dummies, index).unbind(0)):
                out[path][which] = x
    return {path: (k, v) for path, (k, v) in out.items()}


@contextlib.contextmanager
def alignit(pair: ModelPair, akv: AlignITKV) -> Iterator[StableDiffusionPipeline]:
    """The denoising pipeline with AlignIT's K/V injected (condition it on ``prompt_embeds=akv.cond_embeds``; SDXL
    also ``pooled_prompt_embeds=akv.cond_pooled``)."""
    pipe = denoiser_of(pair, akv.options)
    with inject_kv(pipe.unet, akv.cond_embeds, {} if denoiser_own(akv) else akv.kv):
        yield pipe


def denoiser_own(akv: AlignITKV) -> bool:
    """Whether the infused K/V are, at every position of every prompt, the denoiser's own K/V of the conditioning it
    is given: the baseline denoises, conditioned on the prompt without modifier, and every position takes the
    baseline's K/V of that very position (a prompt without concept span, end tokens from the baseline). Then nothing
    is injected and the layers project as in a plain call, over the pipeline's own rows, so the images are the
    baseline's bit for bit whatever batch layout the projections of ``alignit_kv`` had."""
    o = akv.options
    if o.denoiser != "baseline" or not (o.keys and o.values and o.alpha == 1.0):
        return False
    same = lambda plan: all(s == BASELINE and pos == i for i, (s, pos) in enumerate(zip(plan.source, plan.position)))
    return all(same(plan) and len(plan.source) == akv.cond_embeds.shape[1] for plan in akv.plans)


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
