"""Laying a new group out at the file level: like one already in the store, or from scratch.

Every branch of a store has the same shape, and a branch has many K/V groups of the same variables: creating each
through xarray (``to_zarr``) costs far more than a batch's write (zarr's round trips per array), so none is: the first
of a kind is laid out from scratch as xarray would, the others copy its ``zarr.json`` files with their own sizes
(``zarr_layout``), all of a batch's new groups written side by side. Groups of other variables go through xarray."""

from __future__ import annotations

from collections.abc import Iterator

import xarray as xr

from . import zarr_layout as zl
from .arrays import PartialArrays


def templates(group: str, started: set[str]) -> Iterator[str]:
    """Groups already in the store (``started``) that ``group`` may copy its layout from: the same group of another
    model (``custom/kv/x`` ← ``baseline/kv/x``), then its siblings (``baseline/kv/y`` ← ``baseline/kv/x``)."""
    model, _, rest = group.partition("/")
    parent = group.rpartition("/")[0]
    for other in sorted({g.partition("/")[0] for g in started} - {model}):
        if f"{other}/{rest}" in started and rest:
            yield f"{other}/{rest}"
        elif not rest and other in started:
            yield other
    if parent:
        rel = parent.partition("/")[2]
        for other in sorted(g for g in started if g.rpartition("/")[0].partition("/")[2] == rel):
            if other != group and other.count("/") == group.count("/"):
                yield other


def plan_like(
    arrays: PartialArrays, group: str, ds: xr.Dataset, template: str, n_prompts: int | None
) -> zl.Plan | None:
    """Lay ``group`` out like ``template`` (``zarr_layout.plan_like``) and take it into ``arrays``; returns the
    plan that writes its files (``zarr_layout.write_plan``), None if their variables differ.

    The template's index values (token, layer) are known for groups of this run only: a group of a resumed run is
    no template, since its index values would have to be read back to be compared."""
    if template not in arrays.index:
        return None
    out = zl.plan_like(arrays.root, group, ds, template, n_prompts, arrays.index[template], arrays.layouts)
    if out is None:
        return None
    created, plan = out
    axes = {k: list(ds.variables[k].dims).index("prompt") for k in created}
    arrays.add(group, arrays.index[template], created, axes)
    return plan


def plan_new(arrays: PartialArrays, group: str, ds: xr.Dataset, n_prompts: int | None) -> zl.Plan | None:
    """Lay ``group`` out from scratch (``zarr_layout.plan_new``, the store's encoding) and take it into ``arrays``;
    returns the plan that writes its files, None if xarray must write it."""
    out = zl.plan_new(arrays.root, group, ds, arrays.encoding(ds)[0], n_prompts, arrays.layouts)
    if out is None:
        return None
    created, plan, index = out
    axes = {k: list(ds.variables[k].dims).index("prompt") for k in created}
    arrays.add(group, index, created, axes)
    return plan
