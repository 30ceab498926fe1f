"""New groups laid out like a template group at the file level: planned (``plan_like``: every directory and
``zarr.json`` of the new group, computed without touching the disk), then written (``write_plan``), so that the many
groups of one batch are written side by side by a pool of threads. A planned group serves as a template before its
files exist: its plan is kept in the same cache its files would have been read into."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from zarr.core.metadata.v3 import ArrayV3Metadata

from .zarr_chunks import GROUP_META, group_arrays, read_node

if TYPE_CHECKING:
    import xarray as xr

Plan = list[tuple[Path, bytes | None]]  # in order: a directory to make (None) or a file's bytes


def plan_like(
    root: Path, group: str, ds: xr.Dataset, template: str, n_prompts: int | None, index: dict, cache: dict
) -> tuple[dict, Plan] | None:
    """The arrays of ``group`` under the zarr store ``root`` laid out from the nodes of ``template``, a group of the
    same variables, dimensions and dtypes: each node's ``zarr.json`` with sizes (and whole-axis chunks) set to
    ``ds``'s, and ``prompt`` to ``n_prompts`` when larger. Index arrays (no ``prompt``: token, layer) are copied,
    so their values in ``index`` (name -> values, the template's) must equal ``ds``'s.

    Returns (name -> metadata of the new arrays along ``prompt``, the plan that writes them); None if the variables
    differ. Implicit parent groups (``custom/kv``) are written at once. ``cache``: kept by the caller for one store
    (templates read, metadata parsed, plans made: a branch lays out ~70 groups from one template)."""
    src, dst = root / template, root / group
    if ("arrays", template) not in cache:
        cache["arrays", template] = group_arrays(src)
    arrays = cache["arrays", template]
    if set(arrays) != set(ds.variables):
        return None
    for name, meta in arrays.items():
        var = ds.variables[name]
        kind = "string" if var.dtype.kind in "OUT" else var.dtype.name
        if list(meta.get("dimension_names") or ()) != list(var.dims) or meta["data_type"] != kind:
            return None
        if "prompt" not in var.dims and not np.array_equal(index.get(name), var.values):
            return None
    for parent in reversed(list(dst.relative_to(root).parents)[:-1]):  # implicit groups (custom/kv)
        if not (root / parent / "zarr.json").is_file():
            (root / parent).mkdir(parents=True, exist_ok=True)
            (root / parent / "zarr.json").write_text(json.dumps(GROUP_META))
    if ("node", template) not in cache:
        cache["node", template] = read_node(src)
    node = dict(cache["node", template])
    keep = {k: v for k, v in node.get("attributes", {}).items() if k == "coordinates"}
    node["attributes"] = {**keep, **ds.attrs}
    plan: Plan = [(dst, None), (dst / "zarr.json", json.dumps(node).encode())]
    created, new_arrays = {}, {}
    for name, meta in arrays.items():
        var = ds.variables[name]
        if "prompt" not in var.dims:  # index coordinates (token, layer): metadata and values, as files
            if ("files", template, name) not in cache:
                folder = src / name
                cache["files", template, name] = [
                    (f.relative_to(folder), f.read_bytes()) for f in sorted(folder.rglob("*")) if f.is_file()
                ]
            files = cache["files", group, name] = cache["files", template, name]
            made = {Path()}
            plan.append((dst / name, None))
            for rel, data in files:
                for parent in reversed(rel.parents):
                    if parent not in made:
                        made.add(parent)
                        plan.append((dst / name / parent, None))
                plan.append((dst / name / rel, data))
            new_arrays[name] = meta
            continue
        key = ("sized", template, name, tuple(var.shape), n_prompts)
        if key not in cache:  # groups of one width share their arrays' metadata
            sized = copy.deepcopy(meta)
            chunks = sized["chunk_grid"]["configuration"]["chunk_shape"]
            for d, (dim, size) in enumerate(zip(var.dims, var.shape)):
                whole = chunks[d] == sized["shape"][d]
                sized["shape"][d] = max(n_prompts or 0, size) if dim == "prompt" else size
                if whole and dim != "prompt":
                    chunks[d] = size
            cache[key] = (sized, json.dumps(sized).encode(), ArrayV3Metadata.from_dict(sized))
        sized, text, parsed = cache[key]
        plan += [(dst / name, None), (dst / name / "zarr.json", text)]
        created[name], new_arrays[name] = parsed, sized
    cache["arrays", group], cache["node", group] = new_arrays, node  # a template before its files are written
    return created, plan


def write_plan(plan: Plan) -> None:
    """Make the directories and write the files of a ``plan_like`` plan, in order."""
    for path, data in plan:
        if data is None:
            path.mkdir(exist_ok=True)
        else:
            path.write_bytes(data)
