"""Cross-attention maps of baseline, customized and AlignIT generations, kept in the store next to the recorded
stages (``/<model>/attention``: ``map`` (prompt, token, y, x), aligned with the branch's tokens and roles), and their
divergences from the baseline's maps as ``compare`` rows (``"stage": "attention_map"``).

Divergence metrics (0 = identical maps): ``one_minus_pearson``, ``jensen_shannon`` (base 2, maps normalized to sum
1), ``one_minus_iou`` (maps thresholded at half their max). Each token is compared with its baseline partner
(``ref_index``), then summarized by role like every other stage.
"""

from __future__ import annotations

import contextlib

import numpy as np
import xarray as xr

from . import store as st
from .attention import AttentionSlices, capture_attention
from .attention_metrics import divergences

ATTENTION_METRICS = ("one_minus_pearson", "jensen_shannon", "one_minus_iou")


def generation_maps(pair, akv, *, include_alignit: bool, slices=AttentionSlices(), **gen) -> dict:
    """{model: (maps Dataset, images)} for baseline, custom and (optionally) AlignIT, same seed and settings."""
    from .generate import _generate, alignit

    runs = [("baseline", pair.baseline, akv.baseline_embeds, contextlib.nullcontext(pair.baseline)),
            ("custom", pair.custom, akv.custom_embeds, contextlib.nullcontext(pair.custom))]
    if include_alignit:
        runs.append(("alignit", None, akv.cond_embeds, alignit(pair, akv)))
    out = {}
    for name, _, embeds, ctx in runs:
        with ctx as pipe, capture_attention(pipe, embeds, slices=slices) as collector:
            images = _generate(pipe, embeds, **gen)
        ds = collector.to_dataset()
        ds = ds.drop_vars([v for v in ("token_text",) if v in ds.coords])
        out[name] = (ds.assign_coords(prompt=np.arange(ds.sizes["prompt"])), images)
    return out


def _gather_maps(b: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """b[prompt, ref[prompt, token]] with NaN maps where ref < 0. b: (prompt, token, y, x)."""
    idx = np.clip(ref, 0, None).astype(np.int64)[:, :, None, None]
    out = np.take_along_axis(b.astype(np.float64), np.broadcast_to(idx, ref.shape + b.shape[2:]), axis=1)
    out[ref < 0] = np.nan
    return out


def attention_rows(tree: xr.DataTree, reference: str = "baseline", n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """``compare`` rows for the attention maps of every branch that has them."""
    from .concepts import ROLES
    from .metrics import bootstrap_ci, role_means

    if reference not in tree.children or "attention" not in tree[reference].children:
        return []
    base = tree[f"{reference}/attention"].to_dataset()["map"].load()
    rows = []
    for model in st.models(tree):
        if model == reference or "attention" not in tree[model].children:
            continue
        labels = st.token_labels(tree, model)
        a = tree[f"{model}/attention"].to_dataset()["map"].load()
        b = a.copy(data=_gather_maps(base.values, labels.ref_index.values.astype(np.int64)))
        div = divergences(a, b)
        role = labels.role.load()
        for metric in ATTENTION_METRICS:
            per_role = role_means(div[metric].transpose("prompt", "token"), role, ROLES)
            for name in ROLES:
                value, lo, hi, n = bootstrap_ci(per_role[name], n_boot, seed)
                rows.append(dict(model=model, reference=reference, stage="attention_map", layer=None, role=name,
                                 metric=metric, value=value, ci_low=lo, ci_high=hi, n=n))
    return rows


def write_overlays(maps: dict, tokenized: dict, prompts: list[str], folder, max_tokens: int = 8) -> None:
    """One overlay figure per prompt and model: the image and the maps of its non-padding tokens."""
    from .attention import plot_overlay

    folder.mkdir(parents=True, exist_ok=True)
    for name, (ds, images) in maps.items():
        for k in range(len(prompts)):
            tp = tokenized[name][k]
            keep = [i for i, r in enumerate(tp.role) if r in ("concept", "context")][:max_tokens]
            m = ds["map"].isel(prompt=k).assign_coords(token_text=("token", tp.tokens))
            plot_overlay(images[k], m, keep, folder / f"{k:03d}-{name}.png")
