"""Distances between a model and the baseline on role-aligned tokens, and their summaries by role.

Pure functions on labeled arrays: they work on numpy- and dask-backed xarray objects alike (lazy until computed).
``cosine_distance`` = 1 − cos(a, b); ``relative_l2`` = ‖a − b‖ / ‖b‖, with b the baseline's partner token
(``ref_index``). Tokens without a partner are NaN and drop out of every summary.

A summary store (``record --summary``) holds these per-token distances already (group ``distance`` of each branch
but the baseline, computed on the device with the same formulas); ``compare_rows`` reads them instead of computing
them, and summarises them the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from .. import store as st
from ..errors import ProbeError, ProbeWarning
from ..schema import BASELINE, KV_STAGES, METRICS, POOLED, ROLES, STAGES, TEXT_STAGES, text_layer, unet_order_key
from .stats import bootstrap_ci, gather_partners, role_means

if TYPE_CHECKING:
    from tqdm import tqdm

DISTANCE = "distance"  # a summary branch's group of per-token distances (``record.summary``)


def _distances(a: np.ndarray, b: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Stacked (cosine distance, relative L2) per token; last axis is the metric."""
    a = a.astype(np.float64)
    bb = gather_partners(b, ref)
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
        _distances,
        a,
        b,
        ref_index,
        input_core_dims=[["token", "channel"], ["ref_token", "channel"], ["token"]],
        output_core_dims=[["token", "metric"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"metric": len(METRICS)}},
    )
    out = out.assign_coords(metric=list(METRICS))
    return xr.Dataset({m: out.sel(metric=m, drop=True) for m in METRICS})


TEXT_GROUPS = ("text", "text_2", "text_out")  # the only/first text encoder, SDXL's second, SDXL's output


def stage_arrays(tree: xr.DataTree, model: str, stage: str) -> Iterator[tuple[int | str | None, xr.DataArray]]:
    """(layer label, DataArray) pairs of one per-token stage: ``layer`` is the encoder layer index (SDXL's second
    encoder: ``text_2.<i>``), the attn2 path, or None (``schema.text_layer``). Text stages come from every text
    group that holds them (``text``; SDXL: ``text``, ``text_2``, ``text_out``)."""
    if stage in TEXT_STAGES:
        for name in TEXT_GROUPS:
            if name not in tree[model].children or stage not in tree[f"{model}/{name}"].data_vars:
                continue
            da = st.group(tree, model, name)[stage]
            if stage == "encoder_layer":
                for i in da.layer.values:
                    yield text_layer(name, int(i)), da.sel(layer=i, drop=True)
            else:
                yield text_layer(name, None), da
    elif stage in KV_STAGES:
        for path in st.kv_paths(tree, model):
            yield path, st.group(tree, model, f"kv/{path}")[stage]


def summary_arrays(tree: xr.DataTree, model: str, stage: str) -> Iterator[tuple[int | str | None, xr.DataArray]]:
    """(layer label, per-token distances (prompt, token, metric)) pairs of one stage of a summary branch (its
    ``distance`` group, ``record --summary``), labelled and ordered as ``stage_arrays``."""
    ds = st.group(tree, model, DISTANCE)
    if stage in TEXT_STAGES:  # SDXL's second encoder: token_embedding_2, encoder_layer_2 (along layer_2)
        for group, suffix in (("text", ""), ("text_2", "_2")):
            if stage + suffix not in ds.data_vars:
                continue
            da = ds[stage + suffix]
            if stage == "encoder_layer":
                for i in da["layer" + suffix].values:
                    yield text_layer(group, int(i)), da.sel({"layer" + suffix: i}, drop=True)
            else:
                yield text_layer(group, None), da
        return
    if stage not in ds.data_vars:
        return
    da = ds[stage]
    if stage in KV_STAGES:
        for path in sorted((str(p) for p in da.site.values), key=unet_order_key):
            yield path, da.sel(site=path, drop=True)
    else:
        yield None, da


def distance_jobs(
    tree: xr.DataTree, model: str, reference: str, stage: str, ref_index: xr.DataArray
) -> Iterator[tuple[int | str | None, Callable[[], xr.Dataset]]]:
    """(layer, a function returning its per-token distances {metric: (prompt, token)}) of one model and stage:
    computed from the recorded activations (each layer paired with the reference's layer of the same label), or
    read from a summary branch's ``distance`` group. Functions, so that nothing is computed before it is needed."""
    if DISTANCE in tree[model].children:
        for layer, da in summary_arrays(tree, model, stage):
            yield layer, lambda da=da: xr.Dataset({m: da.sel(metric=m, drop=True) for m in METRICS})
        return
    ref = dict(stage_arrays(tree, reference, stage))
    for layer, a in stage_arrays(tree, model, stage):
        if layer in ref:
            yield layer, lambda a=a, b=ref[layer]: token_distances(a, b, ref_index)


def pooled_job(tree: xr.DataTree, model: str, reference: str) -> Callable[[], xr.Dataset] | None:
    """A function returning the pooled embeddings' per-prompt distances {metric: (prompt, token=1)} of ``model``
    to ``reference`` (prompt to prompt), or None where either lacks one (SD1.x/SD2.x, AlignIT, summary stores)."""
    if DISTANCE in tree[model].children:  # a summary store holds them (prompt, metric)
        ds = tree[f"{model}/{DISTANCE}"].to_dataset(inherit=False)
        if POOLED not in ds.data_vars:
            return None
        da = ds[POOLED].reset_coords(drop=True).expand_dims(token=[0], axis=1)
        return lambda: xr.Dataset({m: da.sel(metric=m, drop=True) for m in METRICS})
    have = [m for m in (model, reference) if "text_out" in tree[m].children and POOLED in tree[f"{m}/text_out"]]
    if len(have) < 2:
        return None

    def one_token(m):
        da = tree[f"{m}/text_out"].to_dataset(inherit=False)[POOLED].reset_coords(drop=True)
        return da.rename(pooled_channel="channel").expand_dims(token=[0], axis=1)

    def run():
        a = one_token(model)
        return token_distances(a, one_token(reference), xr.zeros_like(a.isel(channel=0), dtype=np.int16))

    return run


def compare_rows(
    tree: xr.DataTree,
    reference: str = BASELINE,
    stages: Sequence[str] = STAGES,
    n_boot: int = 1000,
    seed: int = 0,
    progress: tqdm | None = None,
) -> list[dict]:
    """Tidy rows: one per (model, stage, layer, role, metric), the documented ``compare --json`` schema, in
    data-flow order (stages as in ``schema.STAGES``, attn2 layers in UNet order). ``progress`` (a tqdm bar) counts
    compared arrays; its total is set here.

    A full store's distances are computed from the recorded activations; a summary store's (``record --summary``)
    are read, and summarised the same way. SDXL's ``pooled`` stage gives one row per metric, role ``special``."""
    if reference != BASELINE and any(DISTANCE in tree[m].children for m in st.models(tree)):
        raise ProbeError(
            f"a summary store holds distances to {BASELINE} only, not to {reference!r}",
            f"compare against {BASELINE}, or record without --summary",
        )
    jobs, roles = [], {}
    for model in st.models(tree):
        if model == reference:
            continue
        lab = st.token_labels(tree, model)
        roles[model] = lab["role"]
        for stage in stages:
            if stage == POOLED:
                job = pooled_job(tree, model, reference)
                jobs += [(model, stage, None, job)] if job is not None else []
                continue
            for layer, distances in distance_jobs(tree, model, reference, stage, lab["ref_index"]):
                jobs.append((model, stage, layer, distances))
    if progress is not None:
        progress.reset(total=len(jobs))
    rows = []
    for model, stage, layer, distances in jobs:
        dist = distances().compute()
        if stage == POOLED:  # one vector per prompt, the projected end token's state: role special only
            role, names = xr.full_like(dist[METRICS[0]], "special", dtype=object), ("special",)
        else:
            role = roles[model] = roles[model].load()
            names = ROLES
        first = len(rows)
        for metric in METRICS:
            per_role = role_means(dist[metric], role, names)
            for name in names:
                value, lo, hi, n = bootstrap_ci(per_role[name], n_boot, seed)
                rows.append(
                    dict(
                        model=model,
                        reference=reference,
                        stage=stage,
                        layer=layer,
                        role=name,
                        metric=metric,
                        value=value,
                        ci_low=lo,
                        ci_high=hi,
                        n=n,
                    )
                )
        if not any(r["n"] for r in rows[first:]):  # zarr reads missing chunk files as NaN, silently
            where = f"{model} {stage}" + ("" if layer is None else f" {layer}")
            warnings.warn(
                f"{where}: no finite values in the store (chunk files missing, or NaN/inf recorded); record it again",
                ProbeWarning,
                stacklevel=2,
            )
        if progress is not None:
            progress.update(1)
    if any("attention" in tree[m].children for m in st.models(tree)):
        from .attention import attention_rows

        rows += attention_rows(tree, reference, n_boot, seed)
    return rows
