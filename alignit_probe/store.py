"""The store: an xarray DataTree with one branch per model, written to zarr (default) or netCDF (``.nc``).

Layout (every branch has the same shape)::

    /                       attrs: format, complete, concepts, prompts count, versions, command (JSON strings)
    /<model>                coords (prompt, token): prompt_text, token_id, token_str, role, concept, ref_index
                            attrs: model_id, method, artifacts, dtype, device, seed, warnings, ...
    /<model>/text           token_embedding (prompt, token, channel), encoder_layer (prompt, layer, token, channel),
                            encoder_output (prompt, token, channel)
    /<model>/kv/<attn2 path>  key, value (prompt, token, channel)

``<model>`` is ``baseline``, ``custom`` (``custom2``… for several), ``alignit``. ``ref_index`` is the position of
each token's partner in the baseline's tokens of the same prompt (-1: none), so metrics compare role-aligned tokens.
Writes go to ``<out>.partial`` and are renamed into place when complete: a failed run leaves nothing at ``<out>``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import xarray as xr

from .errors import ProbeError

FORMAT = "alignit-probe/1"
JSON_ATTRS = ("artifacts", "warnings", "concepts", "versions", "command", "sites", "options")
TOKEN_COORDS = ("prompt_text", "token_id", "token_str", "role", "concept", "ref_index")


def is_netcdf(path: str | os.PathLike) -> bool:
    return str(path).endswith(".nc")


def check_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early (before any work) if ``out`` exists and may not be replaced."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ProbeError(f"output {out} already exists", "pass --overwrite to replace it, or choose another --out")
    if not out.parent.exists():
        raise ProbeError(f"output folder {out.parent} does not exist", "create it first or choose another --out")
    return out


def encode_attrs(attrs: dict) -> dict:
    return {k: json.dumps(v) if k in JSON_ATTRS else v for k, v in attrs.items() if v is not None}


def decode_attrs(attrs: dict) -> dict:
    return {k: json.loads(v) if k in JSON_ATTRS and isinstance(v, str) else v for k, v in attrs.items()}


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


class StoreWriter:
    """Streams recorded batches into ``<out>.partial`` and moves it to ``out`` on ``commit()``."""

    def __init__(self, out: str | os.PathLike, *, overwrite: bool = False, attrs: dict | None = None):
        self.out = check_output(out, overwrite)
        self.tmp = self.out.with_name(self.out.name + ".partial")
        self.netcdf = is_netcdf(self.out)
        self.attrs = dict(attrs or {})
        self._nodes: dict[str, list[xr.Dataset]] = {}
        self._started: set[str] = set()
        self._model_attrs: dict[str, dict] = {}
        _remove(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            _remove(self.tmp)

    def _write(self, group: str, ds: xr.Dataset) -> None:
        if self.netcdf:
            self._nodes.setdefault(group, []).append(ds)
        elif group in self._started:
            ds.to_zarr(self.tmp, group=group, append_dim="prompt", consolidated=False)
        else:
            ds.to_zarr(self.tmp, group=group, mode="w-" if not self._started else "a", consolidated=False)
        self._started.add(group)

    def append(self, model: str, batch, model_attrs: dict | None = None) -> None:
        """Append one recorded batch (``record.Batch``) to ``model``'s branch."""
        coords = batch.coords.copy()
        if model not in self._model_attrs:
            self._model_attrs[model] = encode_attrs(model_attrs or {})
        coords.attrs = self._model_attrs[model]  # appends rewrite group attrs: keep them
        self._write(model, coords)
        for name, ds in batch.groups.items():
            self._write(f"{model}/{name}", ds)

    def put(self, group: str, ds: xr.Dataset) -> None:
        """Write a whole node at once (embedding diagnostics, attention maps)."""
        if self.netcdf:
            self._nodes[group] = [ds]
        else:
            ds.to_zarr(self.tmp, group=group, mode="w", consolidated=False)
        self._started.add(group)

    def commit(self) -> Path:
        attrs = encode_attrs({**self.attrs, "format": FORMAT, "complete": 1})
        if self.netcdf:
            tree = xr.DataTree.from_dict(
                {"/": xr.Dataset(attrs=attrs)}
                | {g: (xr.concat(p, "prompt") if len(p) > 1 else p[0]) for g, p in self._nodes.items()}
            )
            tree.to_netcdf(self.tmp, engine="h5netcdf")
        else:
            import zarr

            zarr.open_group(str(self.tmp), mode="a").attrs.update(attrs)
            zarr.consolidate_metadata(str(self.tmp))
        old = self.out.with_name(self.out.name + ".old")
        if self.out.exists():
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        _remove(old)
        return self.out


def open_store(path: str | os.PathLike, chunks: dict | None = None) -> xr.DataTree:
    """Open a store lazily (dask-backed with ``chunks={}``; in memory-mapped numpy otherwise)."""
    path = Path(path)
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        hint = "rerun the same record command to finish it" if partial.exists() else "run `alignit-probe record` first"
        raise ProbeError(f"store {path} does not exist", hint)
    try:
        if is_netcdf(path):
            tree = xr.open_datatree(path, engine="h5netcdf", chunks=chunks)
        else:
            tree = xr.open_datatree(path, engine="zarr", chunks=chunks)
    except Exception as e:  # noqa: BLE001 - any backend failure is a bad input here
        raise ProbeError(f"cannot open store {path}: {type(e).__name__}", "pass a store written by `alignit-probe record`")
    if tree.attrs.get("format") != FORMAT or not tree.attrs.get("complete"):
        raise ProbeError(f"{path} is not a complete alignit-probe store", "rerun `alignit-probe record` with --overwrite")
    return tree


def models(tree: xr.DataTree) -> list[str]:
    """Branches that hold a recorded model (baseline first)."""
    names = [n for n, node in tree.children.items() if "token_id" in node.coords]
    return sorted(names, key=lambda n: (n != "baseline", n != "custom", n))


def model_attrs(tree: xr.DataTree, model: str) -> dict:
    return decode_attrs(dict(tree[model].attrs))


def store_attrs(tree: xr.DataTree) -> dict:
    return decode_attrs(dict(tree.attrs))


def token_labels(tree: xr.DataTree, model: str) -> xr.Dataset:
    """The per-token coordinates of one branch."""
    return tree[model].to_dataset(inherit=False)[list(TOKEN_COORDS)]


def group(tree: xr.DataTree, model: str, name: str) -> xr.Dataset:
    """One group of a branch (``text``, ``kv/<path>``, …) with the branch's token labels as coordinates."""
    ds = tree[f"{model}/{name}"].to_dataset(inherit=True)
    return ds.assign_coords({k: v for k, v in token_labels(tree, model).coords.items() if k in TOKEN_COORDS})


def kv_paths(tree: xr.DataTree, model: str) -> list[str]:
    """attn2 paths recorded for a branch, in the UNet's order."""
    node = tree[model]
    present = list(node["kv"].children) if "kv" in node.children else []
    order = model_attrs(tree, model).get("sites") or []
    return [p for p in order if p in present] + sorted(p for p in present if p not in order)
