"""Distances between a model and the baseline on role-aligned tokens, and their summaries by role.

Pure functions on labeled arrays: they work on numpy- and dask-backed xarray objects alike (lazy until computed).
``cosine_distance`` = 1 − cos(a, b); ``relative_l2`` = ‖a − b‖ / ‖b‖, with b the baseline's partner token
(``ref_index``). Tokens without a partner are NaN and drop out of every summary.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import store as st
from .record import STAGES, TEXT_STAGES

METRICS = ("cosine_distance", "relative_l2")


def _gather(b: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """b[..., ref[..., t], :] with NaN where ref < 0. b: (..., token, channel), ref: (..., token)."""
    idx = np.clip(ref, 0, None).astype(np.int64)[..., None]
    out = np.take_along_axis(b.astype(np.float64), np.broadcast_to(idx, ref.shape + (b.shape[-1],)), axis=-2)
    out[ref < 0] = np.nan
    return out


def _distances(a: np.ndarray, b: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Stacked (cosine distance, relative L2) per token; last axis is the metric."""
    a = a.astype(np.float64)
    bb = _gather(b, ref)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(bb, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # 1 − cos(a, b) = ‖â − b̂‖² / 2: exactly 0 for identical tokens, accurate for small angles
        cos = 0.5 * ((a / na[..., None] - bb / nb[..., None]) ** 2).sum(-1)
        rel = np.linalg.norm(a - bb, axis=-1) / nb
    return np.stack([cos, rel], axis=-1)


def token_distances(a: xr.DataArray, b: xr.DataArray, ref_index: xr.DataArray) -> xr.Dataset:
    """Per-token distances of ``a`` to its partner in ``b`` (same extra dims, e.g. ``layer``), lazily if dask."""
    # token labels would be compared between the inputs (a dask compute each when lazy): keep index coords only
    a, b, ref_index = (x.reset_coords(drop=True) for x in (a, b, ref_index))
    b = b.rename(token="ref_token")
    out = xr.apply_ufunc(
        _distances, a, b, ref_index,
        input_core_dims=[["token", "channel"], ["ref_token", "channel"], ["token"]],
        output_core_dims=[["token", "metric"]],
        dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"metric": len(METRICS)}},
    )
    out = out.assign_coords(metric=list(METRICS))
    return xr.Dataset({m: out.sel(metric=m, drop=True) for m in METRICS})


def stage_arrays(tree: xr.DataTree, model: str, stage: str):
    """(layer label, DataArray) pairs of one stage: ``layer`` is the encoder layer index, the attn2 path, or None."""
    if stage in TEXT_STAGES and "text" not in tree[model].children:
        return
    if stage in ("token_embedding", "encoder_output"):
        yield None, st.group(tree, model, "text")[stage]
    elif stage == "encoder_layer":
        da = st.group(tree, model, "text")[stage]
        for i in da.layer.values:
            yield int(i), da.sel(layer=i, drop=True)
    else:
        for path in st.kv_paths(tree, model):
            yield path, st.group(tree, model, f"kv/{path}")[stage]


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Mean and percentile-bootstrap CI of the mean over prompts (NaNs dropped)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    if v.size == 1:
        return float(v[0]), float(v[0]), float(v[0]), 1
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(v.mean()), float(lo), float(hi), int(v.size)


def role_means(dist: xr.DataArray, role: xr.DataArray, roles) -> dict[str, np.ndarray]:
    """Per prompt: the mean over the tokens of each role (NaN where a prompt has none)."""
    d = np.asarray(dist)
    r = np.asarray(role).astype(object)
    out = {}
    for name in roles:
        mask = (r == name) & np.isfinite(d)
        with np.errstate(invalid="ignore"):
            out[name] = np.where(mask, d, 0).sum(-1) / mask.sum(-1)
    return out


def compare_rows(tree: xr.DataTree, reference: str = "baseline", stages=STAGES, n_boot: int = 1000, seed: int = 0,
                 progress=None) -> list[dict]:
    """Tidy rows: one per (model, stage, layer, role, metric), the documented ``compare --json`` schema."""
    from .concepts import ROLES

    rows = []
    for model in st.models(tree):
        if model == reference:
            continue
        labels = st.token_labels(tree, model)
        ref_index, role = labels["ref_index"], labels["role"].load()
        for stage in stages:
            pairs = zip(stage_arrays(tree, model, stage), stage_arrays(tree, reference, stage))
            for (layer, a), (_, b) in pairs:
                dist = token_distances(a, b, ref_index).compute()
                for metric in METRICS:
                    per_role = role_means(dist[metric], role, ROLES)
                    for name in ROLES:
                        value, lo, hi, n = bootstrap_ci(per_role[name], n_boot, seed)
                        rows.append(dict(model=model, reference=reference, stage=stage, layer=layer, role=name,
                                         metric=metric, value=value, ci_low=lo, ci_high=hi, n=n))
                if progress is not None:
                    progress.update(1)
    if any("attention" in tree[m].children for m in st.models(tree)):
        from .attention_store import attention_rows

        rows += attention_rows(tree, reference, n_boot, seed)
    return rows
