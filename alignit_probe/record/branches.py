"""Branches beyond the recorded models: AlignIT's infused K/V per prompt (``alignit`` / ``alignit-<model>``, token
labels aligned to the baseline) and the cross-attention maps of generations (``/<model>/attention``), also of the
baseline alone (``baseline_maps``, ``write_maps_store``: a store with the baseline's token labels and maps only)."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
from numpy.typing import DTypeLike

from ..alignit.engine import AlignITKV, AlignITOptions, alignit, end_from, options_dict
from ..alignit.generation import generate_images
from ..alignit.plan import alignit_plan, tokenize_dummies
from ..capture.attention import AttentionCollector, AttentionSlices, capture_attention
from ..capture.sites import attn2_paths
from ..errors import ProbeWarning
from ..models.encoder import conditioning
from ..models.pipes import is_xl
from ..schema import ALIGNIT, BASELINE
from ..store.batch import Batch, token_coords
from ..store.writer import StoreWriter
from ..text.concepts import Concept, TokenizedPrompt, tokenize_pair
from .batch import to_host_all

if TYPE_CHECKING:
    from pathlib import Path

    from diffusers import StableDiffusionPipeline

    from ..models.load import ModelPair


def alignit_batch(akv: AlignITKV, start: int, store_dtype: DTypeLike = np.float32) -> Batch:
    """The infused K/V of one batch of prompts (global indices from ``start``) as a store batch."""
    coords = token_coords([p.tokens for p in akv.plans], start)
    index = {"prompt": coords.prompt.values, "token": coords.token.values}
    ptc = ("prompt", "token", "channel")
    groups, shared = {}, xr.Coordinates(index)  # one index object for every site
    host = iter(to_host_all([t for k_v in akv.kv.values() for t in k_v], store_dtype))
    for path in akv.kv:
        k, v = next(host), next(host)
        groups[f"kv/{path}"] = xr.Dataset({"key": (ptc, k), "value": (ptc, v)}, coords=shared, attrs={"site": path})
    return Batch(coords, groups)


def alignit_length(pair: ModelPair, concepts: list[Concept], prompts: list[str], options: AlignITOptions) -> int:
    """The most token positions an AlignIT sequence of ``prompts`` fills (start and end token included): what
    ``--drop-padding`` must keep for the alignit branch. Tokenization only, no model."""
    dummies = tokenize_dummies(pair.custom, pair.baseline.tokenizer, concepts, options.template)
    n = 1
    for p in prompts:
        pair_tokens = tokenize_pair(p, pair.custom, pair.baseline.tokenizer, concepts)
        plan = alignit_plan(*pair_tokens, dummies, end_from(options, dummies))
        n = max(n, sum(r != "padding" for r in plan.tokens.role))
    return n


def alignit_attrs(pair: ModelPair, options: AlignITOptions, extra_attrs: dict | None = None) -> dict:
    """The attributes of an AlignIT branch (``/<alignit branch>``)."""
    return {
        "model_id": pair.baseline_id,
        "custom_ids": pair.custom_ids,
        "method": "alignit",
        "custom_model": pair.name,
        "options": options_dict(options, is_xl(pair.custom)),
        "sites": attn2_paths(pair.custom.unet),
        "warnings": [],
        **(extra_attrs or {}),
    }


def generation_maps(
    pair: ModelPair,
    akv: AlignITKV,
    *,
    include_alignit: bool,
    alignit_name: str = ALIGNIT,
    slices: AttentionSlices = AttentionSlices(),
    **gen,
) -> dict[str, tuple[xr.Dataset, list]]:
    """{branch: (maps Dataset, images)} for the baseline, the customized model (``pair.name``) and, optionally,
    AlignIT (``alignit_name``): same seed and settings (``gen``: ``generate_images``' keywords)."""
    runs = [
        (BASELINE, akv.baseline_embeds, akv.baseline_pooled, contextlib.nullcontext(pair.baseline), akv.baseline),
        (pair.name, akv.custom_embeds, akv.custom_pooled, contextlib.nullcontext(pair.custom), akv.custom),
    ]
    if include_alignit:
        plans = [p.tokens for p in akv.plans]
        runs.append((alignit_name, akv.cond_embeds, akv.cond_pooled, alignit(pair, akv), plans))
    out = {}
    for name, embeds, pooled, ctx, tokenized in runs:
        with ctx as pipe, capture_attention(pipe, embeds, slices=slices) as collector:
            images = generate_images(pipe, embeds, pooled_prompt_embeds=pooled, **gen)
        out[name] = (branch_maps(collector, tokenized), images)
    return out


def branch_maps(collector: AttentionCollector, tokenized: list[TokenizedPrompt]) -> xr.Dataset:
    """A collector's maps, prompts 0…P−1, labeled with the branch's tokens: ``token_str`` and ``role`` (prompt,
    token), as the store's token labels (a store keeps them once, in the branch's group)."""
    ds = collector.to_dataset()
    ds = ds.drop_vars([v for v in ("token_text",) if v in ds.coords])
    n = ds.sizes["token"]
    labels = {
        name: (("prompt", "token"), np.array([getattr(tp, attr)[:n] for tp in tokenized], dtype=object))
        for name, attr in (("token_str", "tokens"), ("role", "role"))
    }
    return ds.assign_coords(prompt=np.arange(ds.sizes["prompt"]), **labels)


def baseline_tokens(pipe: StableDiffusionPipeline, prompts: list[str]) -> list[TokenizedPrompt]:
    """The prompts as the baseline alone sees them: no concept, every word ``context`` (labels of the store); a
    prompt cut to the encoder's window is said (``truncation_warnings``), as for the customized models."""
    tokenized = [tokenize_pair(p, pipe, pipe.tokenizer, [], allow_absent=True)[1] for p in prompts]
    for note in truncation_warnings(tokenized):
        warnings.warn(note, ProbeWarning, stacklevel=2)
    return tokenized


def truncation_warnings(tokenized: list[TokenizedPrompt]) -> list[str]:
    return [
        f"prompt {k} truncated: {tp.dropped} token(s) beyond the encoder's {len(tp.ids)} dropped"
        for k, tp in enumerate(tokenized)
        if tp.dropped
    ]


def baseline_maps(
    pipe: StableDiffusionPipeline, prompts: list[str], *, slices: AttentionSlices = AttentionSlices(), **gen
) -> dict[str, tuple[xr.Dataset, list]]:
    """{``baseline``: (maps Dataset, images)} of the baseline pipeline alone (DAAM's use; ``gen``:
    ``generate_images``' keywords)."""
    tokenized = baseline_tokens(pipe, prompts)
    embeds, pooled = conditioning(pipe, tokenized)
    with capture_attention(pipe, embeds, slices=slices) as collector:
        images = generate_images(pipe, embeds, pooled_prompt_embeds=pooled, **gen)
    return {BASELINE: (branch_maps(collector, tokenized), images)}


def write_maps_store(
    out: str | os.PathLike, tokenized: list[TokenizedPrompt], maps: xr.Dataset, *, attrs: dict, model_attrs: dict
) -> Path:
    """A store holding the baseline branch's token labels and ``baseline/attention`` only (no recorded stages);
    ``attrs``: root attributes (``concepts``, ``versions``, ``command``, …), ``model_attrs``: the branch's."""
    root = {"concepts": [], "custom_models": [], "n_prompts": len(tokenized)}
    root["warnings"] = truncation_warnings(tokenized)
    root.update(attrs)
    with StoreWriter(out, attrs=root, chunk_prompts=len(tokenized), n_prompts=len(tokenized), background=False) as w:
        w.append(BASELINE, Batch(token_coords(tokenized, 0), {}), model_attrs)
        w.put(f"{BASELINE}/attention", maps)
        return w.commit()
