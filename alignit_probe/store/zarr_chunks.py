"""zarr v3 at the file level, for the store writer's hot path: array metadata read from ``zarr.json`` (no zarr
open, no event loop), whole uncompressed chunks written straight to their files, and groups laid out from a
template group that xarray wrote.

The zarr v3 format defines an uncompressed chunk (a single ``bytes`` codec) as the chunk's bytes in the array's
endianness, in the file named by the chunk key encoding: ``c.<i>.<j>…`` with the "." separator the store uses
(``CHUNK_KEYS``), ``c/<i>/<j>/…`` with "/". Anything else (strings, compressed or partial chunks) goes through zarr.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from zarr.core.metadata.v3 import ArrayV3Metadata

if TYPE_CHECKING:
    import xarray as xr

CHUNK_KEYS = {"name": "default", "separator": "."}  # chunk files c.<i>.<j>… side by side: no folder per chunk
GROUP_META = {"attributes": {}, "zarr_format": 3, "node_type": "group"}  # what xarray writes for a bare group


def read_node(folder: Path) -> dict | None:
    """The parsed ``zarr.json`` of a node, None if there is none."""
    try:
        return json.loads((folder / "zarr.json").read_text())
    except FileNotFoundError:
        return None


def update_attributes(folder: Path, attrs: dict) -> None:
    """Merge ``attrs`` into a node's attributes, atomically: the new ``zarr.json`` replaces the old by a rename,
    so a crash leaves one or the other (zarr's own update rewrites it in place, and takes ~70 ms)."""
    node = read_node(folder)
    node["attributes"] = {**node.get("attributes", {}), **attrs}
    tmp = folder / "zarr.json.tmp"
    tmp.write_text(json.dumps(node))
    os.replace(tmp, folder / "zarr.json")


def array_metadata(folder: Path) -> ArrayV3Metadata:
    return ArrayV3Metadata.from_dict(read_node(folder))


def group_arrays(folder: Path) -> dict[str, dict]:
    """The arrays directly under a group: name -> parsed ``zarr.json``."""
    out = {}
    for p in sorted(folder.iterdir()):
        node = read_node(p) if p.is_dir() else None
        if node is not None and node.get("node_type") == "array":
            out[p.name] = node
    return out


def chunk_files(folder: Path, meta: ArrayV3Metadata, axis: int, n0: int, values: np.ndarray) -> list | None:
    """(path, contiguous block, needs a folder) per chunk file for rows n0… of ``values`` along ``axis``, when they
    are whole uncompressed chunks of the zarr v3 array at ``folder``; None otherwise (zarr must write them)."""
    codecs, keys = meta.codecs, meta.chunk_key_encoding
    sep = getattr(keys, "separator", None)
    if (
        sys.byteorder != "little"
        or len(codecs) != 1
        or type(codecs[0]).__name__ != "BytesCodec"
        or getattr(keys, "name", None) != "default"
        or sep not in ("/", ".")
        or values.dtype.kind not in "fiub"
        or values.dtype != meta.dtype.to_native_dtype()
    ):
        return None
    chunks, sizes = meta.chunk_grid.chunk_shape, values.shape
    if n0 % chunks[axis] or sizes[axis] != chunks[axis] or any(s % c for s, c in zip(sizes, chunks)):
        return None
    out = []
    for at in itertools.product(*(range(s // c) for s, c in zip(sizes, chunks))):
        block = values[tuple(slice(i * c, (i + 1) * c) for i, c in zip(at, chunks))]
        key = sep.join(["c", *(str(i + n0 // chunks[axis] if d == axis else i) for d, i in enumerate(at))])
        out.append((folder / key, block, sep == "/"))
    return out


def write_file(item: tuple[Path, np.ndarray, bool]) -> None:
    """Write one ``chunk_files`` item."""
    path, block, nested = item
    if nested:
        path.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(block).tofile(path)


def create_like(
    root: Path, group: str, ds: xr.Dataset, template: str, n_prompts: int | None, index: dict, cache: dict | None = None
) -> dict | None:
    """Create ``group``'s (empty, preallocated) arrays under the zarr store ``root`` from the nodes of ``template``,
    a group of the same variables, dimensions and dtypes that xarray wrote: each node's ``zarr.json`` with sizes
    (and whole-axis chunks) set to ``ds``'s, and ``prompt`` to ``n_prompts`` when larger. Index arrays (no
    ``prompt``: token, layer) are copied, so their values in ``index`` (name -> values, the template's) must equal
    ``ds``'s. Returns name -> metadata of the new arrays along ``prompt``; None (nothing written) if they differ.
    ``cache``: a dict kept by the caller for one store, holding what was read of templates and parsed metadata (a
    branch lays out ~70 groups from one template)."""
    cache = {} if cache is None else cache
    src, dst = root / template, root / group
    if ("arrays", template) not in cache:
        cache["arrays", template] = group_arrays(src)
    arrays = copy.deepcopy(cache["arrays", template])
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
    dst.mkdir(parents=True, exist_ok=True)
    if ("node", template) not in cache:
        cache["node", template] = read_node(src)
    meta = copy.deepcopy(cache["node", template])
    keep = {k: v for k, v in meta.get("attributes", {}).items() if k == "coordinates"}
    meta["attributes"] = {**keep, **ds.attrs}
    (dst / "zarr.json").write_text(json.dumps(meta))
    created = {}
    for name, meta in arrays.items():
        var = ds.variables[name]
        if "prompt" not in var.dims:  # index coordinates (token, layer): metadata and values, as files
            if ("files", template, name) not in cache:
                cache["files", template, name] = [
                    (f.relative_to(src / name), f.read_bytes()) for f in sorted((src / name).rglob("*")) if f.is_file()
                ]
            for rel, data in cache["files", template, name]:
                (dst / name / rel).parent.mkdir(parents=True, exist_ok=True)
                (dst / name / rel).write_bytes(data)
            continue
        chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
        for d, (dim, size) in enumerate(zip(var.dims, var.shape)):
            whole = chunks[d] == meta["shape"][d]
            meta["shape"][d] = max(n_prompts or 0, size) if dim == "prompt" else size
            if whole and dim != "prompt":
                chunks[d] = size
        (dst / name).mkdir()
        text = json.dumps(meta)
        (dst / name / "zarr.json").write_text(text)
        if ("meta", text) not in cache:  # groups of one width share their arrays' metadata
            cache["meta", text] = ArrayV3Metadata.from_dict(meta)
        created[name] = cache["meta", text]
    return created


def consolidate(root: Path) -> None:
    """Consolidate the metadata of the zarr v3 store at ``root`` into its ``zarr.json``, as
    ``zarr.consolidate_metadata`` does (the same ``consolidated_metadata`` entry: every node's ``zarr.json`` by its
    path, groups with an empty one of their own), read with plain file reads rather than zarr's walk of the
    hierarchy (~15× faster for a store of a few hundred nodes); the new root replaces the old by a rename."""
    nodes: dict[str, dict] = {}

    def walk(folder: str, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if not entry.is_dir():
                    continue
                node = read_node(Path(entry.path))
                if node is None:
                    continue
                path = prefix + entry.name
                if node.get("node_type") == "group":
                    node["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": {}}
                    nodes[path] = node
                    walk(entry.path, path + "/")
                else:
                    nodes[path] = node

    walk(str(root), "")
    top = read_node(root)
    top["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": nodes}
    tmp = root / "zarr.json.tmp"
    tmp.write_text(json.dumps(top))
    os.replace(tmp, root / "zarr.json")
