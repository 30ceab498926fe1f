"""New groups laid out at the file level: planned (every directory and ``zarr.json`` of the new group, computed
without touching the disk), then written (``write_plan``), so that the many groups of one batch are written side by
side by a pool of threads. ``plan_like`` copies a template group's layout with the new group's sizes; ``plan_new``
lays out the first group of its kind from scratch, as xarray's ``to_zarr`` would (the same documents: a unit test
holds them equal), without zarr's per-array round trips. A planned group serves as a template before its files
exist: its plan is kept in the same cache its files would have been read into."""

from __future__ import annotations

import base64
import copy
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from xarray.conventions import encode_dataset_coordinates
from zarr.core.metadata.v3 import ArrayV3Metadata

from .zarr_chunks import GROUP_META, group_arrays, read_node

if TYPE_CHECKING:
    import xarray as xr

Plan = list[tuple[Path, bytes | None]]  # in order: a directory to make (None) or a file's bytes
FLOAT_FILL = base64.standard_b64encode(struct.pack("<d", float("nan"))).decode()  # xarray's _FillValue of floats
ZSTD = {"name": "zstd", "configuration": {"level": 0, "checksum": False}}  # zarr's default compressor


def make_parents(root: Path, dst: Path, cache: dict) -> None:
    """Make the implicit groups between ``root`` and the new group ``dst`` (``custom/kv``), at once (each looked
    at once per store: ``cache``)."""
    for parent in reversed(list(dst.relative_to(root).parents)[:-1]):
        if ("parent", parent) not in cache and not (root / parent / "zarr.json").is_file():
            (root / parent).mkdir(parents=True, exist_ok=True)
            (root / parent / "zarr.json").write_text(json.dumps(GROUP_META))
        cache["parent", parent] = True


def array_doc(var: xr.Variable, enc: dict, n_prompts: int | None) -> dict | None:
    """The ``zarr.json`` xarray writes for ``var`` with encoding ``enc`` (chunks, chunk keys, compressors None or
    zarr's default), ``prompt`` sized to ``n_prompts`` when larger; None for what ``plan_new`` leaves to xarray:
    other dtypes (bool, 1-byte, big-endian, numpy "U" strings, objects that are not strings), other compressors,
    a variable's own attributes."""
    kind, along = var.dtype.kind, "prompt" in var.dims
    extra = {k: v for k, v in var.attrs.items() if k != "coordinates"}
    if extra or not enc.get("chunks") or 0 in var.shape or enc.get("compressors", ()) not in ((), None):
        return None
    attributes = {}
    if kind in "fiu" and var.dtype.itemsize > 1 and var.dtype.byteorder != ">":
        codecs, data_type, fill = [{"name": "bytes", "configuration": {"endian": "little"}}], var.dtype.name, 0
        if kind == "f":
            fill, attributes["_FillValue"] = "NaN", FLOAT_FILL
    elif along and kind == "O" and all(isinstance(x, str) for x in var.values.flat):  # (numpy "U": UTF-32)
        codecs, data_type, fill = [{"name": "vlen-utf8", "configuration": {}}], "string", ""
    else:
        return None
    if "compressors" not in enc:
        codecs.append(ZSTD)
    if "coordinates" in var.attrs:
        attributes["coordinates"] = var.attrs["coordinates"]
    keys = enc.get("chunk_key_encoding", {"name": "default", "separator": "/"})
    return {
        "shape": [max(n_prompts or 0, s) if d == "prompt" else s for d, s in zip(var.dims, var.shape)],
        "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(enc["chunks"])}},
        "chunk_key_encoding": {"name": keys["name"], "configuration": {"separator": keys["separator"]}},
        "fill_value": fill,
        "codecs": codecs,
        "attributes": attributes,
        "dimension_names": list(var.dims),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def plan_new(
    root: Path, group: str, ds: xr.Dataset, enc: dict, n_prompts: int | None, cache: dict
) -> tuple[dict, Plan, dict] | None:
    """The first group of its kind laid out from scratch: the ``zarr.json`` documents xarray's ``to_zarr`` writes
    for ``ds`` with the store's encoding ``enc`` (``arrays.PartialArrays.encoding``), ``prompt`` sized to
    ``n_prompts`` when larger, and the values of its index coordinates (token, layer: uncompressed whole chunks).
    The arrays along ``prompt`` are left for the writer's ``extend``.

    Returns (name -> metadata of the arrays along ``prompt``, the plan, name -> index values); None where a
    variable is not one of those (``array_doc``) or an attribute is not plain JSON: xarray writes that group."""
    if not all(type(v) in (str, int, float) for v in ds.attrs.values()):
        return None
    variables, attrs = encode_dataset_coordinates(ds)
    dst = root / group
    node = {"attributes": dict(attrs), "zarr_format": 3, "node_type": "group"}
    plan: Plan = [(dst, None), (dst / "zarr.json", json.dumps(node).encode())]
    docs, created, index = {}, {}, {}
    for name, var in variables.items():
        along = "prompt" in var.dims
        if name not in enc or not (along or var.dims == (name,)):
            return None
        doc = docs[name] = array_doc(var, enc[name], n_prompts)  # (strings only along prompt)
        if doc is None:
            return None
        text = json.dumps(doc).encode()
        plan += [(dst / name, None), (dst / name / "zarr.json", text)]
        if along:
            created[name] = ArrayV3Metadata.from_dict(doc)
            continue
        index[name] = var.values
        chunk = "c" + doc["chunk_key_encoding"]["configuration"]["separator"] + "0"
        if doc["chunk_key_encoding"]["configuration"]["separator"] == "/" or len(doc["codecs"]) != 1:
            return None  # a folder per chunk, or compressed: not what the store's encoding gives index coordinates
        data = np.ascontiguousarray(var.values, dtype=var.dtype.newbyteorder("<")).tobytes()
        plan.append((dst / name / chunk, data))
        cache["files", group, name] = [(Path(chunk), data), (Path("zarr.json"), text)]  # as plan_like reads them
    make_parents(root, dst, cache)
    cache["arrays", group], cache["node", group] = docs, node  # a template before its files are written
    return created, plan, index


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
    make_parents(root, dst, cache)
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
        key = ("sized", json.dumps(meta), tuple(var.shape), n_prompts)
        if key not in cache:  # arrays of one kind and width share their metadata, whichever group they come from
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
