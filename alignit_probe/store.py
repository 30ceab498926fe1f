"""The store: an xarray DataTree with one branch per model, written to zarr (default) or netCDF (``.nc``).

Layout (every branch has the same shape)::

    /                       attrs: format, complete, concepts, n_prompts, versions, command, warnings, options,
                            n_tokens (kept token positions) / n_tokens_full, fingerprint, shard, prompt_range,
                            written ({model: prompts}) (lists and dicts as JSON strings)
    /<model>                coords (prompt, token): prompt_text, token_id, token_str, role, concept, ref_index
                            attrs: model_id, method, artifacts, dtype, device, seed, warnings, ...
    /<model>/text           token_embedding (prompt, token, channel), encoder_layer (prompt, layer, token, channel),
                            encoder_output (prompt, token, channel)
    /<model>/kv/<attn2 path>  key, value (prompt, token, channel)

``<model>`` is ``baseline``, ``custom`` (``custom2``… for several), ``alignit``. ``ref_index`` is the position of
each token's partner in the baseline's tokens of the same prompt (-1: none), so metrics compare role-aligned tokens.
Writes stream into ``<out>.partial`` (zarr) and are renamed into place when complete: a failed run leaves nothing
at ``<out>``, and rerunning the same job resumes the partial store (``StoreWriter``). Chunks: one batch of prompts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import os
import queue
import shutil
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from zarr.core.sync import sync as zarr_sync

from .errors import ProbeError

FORMAT = "alignit-probe/1"
JSON_ATTRS = ("artifacts", "warnings", "concepts", "versions", "command", "sites", "options", "written", "custom_ids",
              "prompt_range")
TOKEN_COORDS = ("prompt_text", "token_id", "token_str", "role", "concept", "ref_index")
GROUP_META = {"attributes": {}, "zarr_format": 3, "node_type": "group"}  # what xarray writes for a bare group


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
    """Streams recorded batches into ``<out>.partial`` (a zarr store) and moves it to ``out`` on ``commit()``.

    * Chunks: one chunk holds ``chunk_prompts`` prompts (one batch) and, for ``encoder_layer``, one layer. Numeric
      arrays are stored uncompressed (activations barely compress; zstd costs more than the disk write), so whole
      chunks are written straight to their files, which the zarr v3 format defines as the chunk's little-endian
      bytes at ``c/i/j/…`` (one copy, several files at once). Strings and partial chunks go through zarr.
    * ``n_prompts`` (prompts per model, when known) preallocates every array, so appends never rewrite metadata;
      ``commit()`` trims each model to what was written.
    * Appends are crash-consistent: a batch's arrays are written first, the root attribute ``written``
      (``{model: prompts}``) is advanced last. With ``background=True`` the writes run in a thread, one batch behind
      the caller, so the next batch is computed while this one is written (worth it when a GPU computes).
    * Resume: when ``<out>.partial`` exists and its ``fingerprint`` and ``shard`` attributes equal those in ``attrs``,
      every model is trimmed back to its ``written`` count and recording continues from there (``written(model)``);
      ``append`` drops prompts that are already stored, so a caller may also start over from the first prompt. A
      partial store of another job is replaced (a note on stderr). Without a ``fingerprint`` (or with
      ``resume=False``) nothing is resumed.
    * ``n_tokens``: token positions beyond it are dropped from every batch (``--drop-padding``).
    * ``.nc`` outputs are converted from the zarr partial store on ``commit()``.
    """

    def __init__(self, out: str | os.PathLike, *, overwrite: bool = False, attrs: dict | None = None,
                 chunk_prompts: int | None = None, n_prompts: int | None = None, n_tokens: int | None = None,
                 first_prompt: int = 0, resume: bool = True, background: bool = True, log=None):
        self.out = check_output(out, overwrite)
        self.tmp = self.out.with_name(self.out.name + ".partial")
        self.netcdf = is_netcdf(self.out)
        self.attrs = dict(attrs or {})
        self.chunk_prompts, self.n_prompts, self.n_tokens = chunk_prompts, n_prompts, n_tokens
        self.first_prompt, self.background = first_prompt, background
        self.log = log if log is not None else sys.stderr
        self._written: dict[str, int] = {}  # persisted: prompts fully written per model (writer thread)
        self._queued: dict[str, int] = {}  # accepted by append (caller's thread)
        self._started: set[str] = set()  # groups that exist
        self._scanned: set[str] = set()  # groups whose arrays are in _arrays
        self._arrays: dict[tuple[str, str], tuple[object, int]] = {}  # (group, name) -> (AsyncArray, prompt axis)
        self._index: dict[str, dict] = {}  # group -> values of its arrays without ``prompt`` (token, layer)
        self._thread = self._pool = None
        self._error: BaseException | None = None
        self._abort = False
        self.resumed = resume and self._resume()
        if not self.resumed:
            _remove(self.tmp)
            self._root = zarr.open_group(str(self.tmp), mode="w-")
            self._root.attrs.update(encode_attrs({**self.attrs, "format": FORMAT, "written": {}}))
        self._queued = dict(self._written)

    # ------------------------------------------------------------------------------------------------ resume
    def _resume(self) -> bool:
        if self.attrs.get("fingerprint") is None or not self.tmp.is_dir():
            return False
        try:
            root = zarr.open_group(str(self.tmp), mode="r+")
            old = decode_attrs(dict(root.attrs))
            written = {str(k): int(v) for k, v in old["written"].items()}
        except Exception:  # noqa: BLE001 - unreadable leftovers are replaced
            old, written = {}, {}
        key = ("format", "fingerprint", "shard")
        if [old.get(k) for k in key] != [({**self.attrs, "format": FORMAT}).get(k) for k in key]:
            print(f"note: {self.tmp} was left by a different recording job: starting afresh", file=self.log)
            return False
        for name, node in list(root.members()):
            if written.get(name, 0) == 0 or not isinstance(node, zarr.Group):
                _remove(self.tmp / name)
                written.pop(name, None)
                continue
            self._started.add(name)
            for sub, member in node.members(max_depth=None):
                if isinstance(member, zarr.Group):
                    self._started.add(f"{name}/{sub}")
        self._root, self._written = root, written
        for model, n in written.items():  # drop what the interrupted run wrote beyond its count, then regrow
            self._resize(model, n)
            if self.n_prompts:
                self._resize(model, self.n_prompts)
        done = ", ".join(f"{m} {n}" for m, n in written.items()) or "nothing"
        print(f"resuming {self.tmp}: {done} prompt(s) already written", file=self.log)
        return True

    def written(self, model: str) -> int:
        """Prompts of this job already accepted for ``model`` (stored, or queued for writing)."""
        return self._queued.get(model, 0)

    # ------------------------------------------------------------------------------------------------ thread
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self._stop(abort=exc_type is not None)
        if exc_type is not None and self.attrs.get("fingerprint") is None:
            _remove(self.tmp)  # nothing could resume it

    def _submit(self, fn, *args) -> None:
        self._check()
        if not self.background:
            return fn(*args)
        if self._thread is None:
            self._queue = queue.Queue(maxsize=1)
            self._thread = threading.Thread(target=self._work, name="alignit-probe-writer", daemon=True)
            self._thread.start()
        self._queue.put((fn, args))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None and not self._abort:
                    item[0](*item[1])
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = e
            finally:
                self._queue.task_done()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Wait until every appended batch is on disk."""
        if self._thread is not None:
            self._queue.join()
        self._check()

    def _stop(self, abort: bool = False) -> None:
        if self._thread is not None:
            self._abort = abort
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    # ------------------------------------------------------------------------------------------------ writes
    def _encoding(self, ds: xr.Dataset) -> tuple[dict, dict]:
        """zarr encoding (chunks, compressors) and the matching dask chunks of the variables along ``prompt``."""
        enc, chunks = {}, {}
        for name, var in ds.variables.items():
            if "prompt" not in var.dims:
                continue
            sizes = {d: (1 if d == "layer" else s) for d, s in var.sizes.items()}
            sizes["prompt"] = self.chunk_prompts or var.sizes["prompt"]
            enc[name] = {"chunks": tuple(sizes[d] for d in var.dims)}
            if var.dtype.kind in "fiub":
                enc[name]["compressors"] = None
            chunks.update(sizes)
        return enc, chunks

    def _create(self, group: str, ds: xr.Dataset, mode: str = "a") -> None:
        ds = ds.copy()
        for var in ds.variables.values():
            var.encoding = {}
        enc, chunks = self._encoding(ds)
        if ds.chunks:
            ds = ds.chunk({d: c for d, c in chunks.items() if d in ds.dims})
        ds.to_zarr(self.tmp, group=group, mode=mode, consolidated=False, encoding=enc)
        self._started.add(group)
        self._index[group] = {k: v.values for k, v in ds.variables.items() if "prompt" not in v.dims}
        self._scanned.discard(group)  # (re)written: its arrays are opened afresh
        for key in [k for k in self._arrays if k[0] == group]:
            del self._arrays[key]

    def _model_arrays(self, model: str) -> list:
        """Every array along ``prompt`` in ``model``'s groups: (AsyncArray, prompt axis)."""
        for group in sorted(g for g in self._started - self._scanned if g == model or g.startswith(model + "/")):
            for name, member in zarr.open_group(str(self.tmp / group), mode="r+").arrays():
                dims = list(member.metadata.dimension_names or ())
                if "prompt" in dims:
                    self._arrays.setdefault((group, name), (member.async_array, dims.index("prompt")))
            self._scanned.add(group)
        return [v for (g, _), v in self._arrays.items() if g == model or g.startswith(model + "/")]

    def _resize(self, model: str, n: int) -> None:
        """Set the prompt length of all ``model``'s arrays to ``n`` (chunks beyond it are deleted)."""
        jobs = []
        for arr, axis in self._model_arrays(model):
            if arr.shape[axis] != n:
                jobs.append(arr.resize(arr.shape[:axis] + (n,) + arr.shape[axis + 1 :]))
        zarr_sync(_gather(jobs))

    def _extend(self, items: list[tuple[str, xr.Dataset]], n0: int) -> None:
        """Write each dataset's rows as prompts n0, n0+1, … of its group's arrays along ``prompt``."""
        files, jobs = [], []
        for group, ds in items:
            n = ds.sizes["prompt"]
            for name, var in ds.variables.items():
                if "prompt" not in var.dims:
                    continue
                arr, axis = self._arrays.get((group, name)) or self._open(group, name)
                grow = arr.shape[axis] < n0 + n
                chunk_files = self._chunk_files(self.tmp / group / name, arr.metadata, axis, n0, var.values)
                if chunk_files is not None:
                    files += chunk_files
                    if grow:
                        jobs.append(arr.resize(arr.shape[:axis] + (n0 + n,) + arr.shape[axis + 1 :]))
                else:
                    where = tuple(slice(n0, n0 + n) if d == axis else slice(None) for d in range(var.ndim))
                    jobs.append(_grow_and_set(arr, axis, n0 + n if grow else None, where, var.values))
        if files:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1))
            list(self._pool.map(_write_file, files))
        zarr_sync(_gather(jobs))

    def _open(self, group: str, name: str):
        member = zarr.open_array(str(self.tmp / group / name), mode="r+")
        dims = list(member.metadata.dimension_names or ())
        return self._arrays.setdefault((group, name), (member.async_array, dims.index("prompt")))

    @staticmethod
    def _chunk_files(folder: Path, meta, axis: int, n0: int, values) -> list | None:
        """(path, contiguous block) per chunk file for rows n0… of ``values``, when they are whole uncompressed
        chunks of a zarr v3 array; None otherwise (zarr writes them then)."""
        codecs = getattr(meta, "codecs", ())
        if (getattr(meta, "zarr_format", 2) != 3 or sys.byteorder != "little" or len(codecs) != 1
                or type(codecs[0]).__name__ != "BytesCodec" or getattr(meta.chunk_key_encoding, "separator", "") != "/"
                or values.dtype.kind not in "fiub" or values.dtype != meta.dtype.to_native_dtype()):
            return None
        chunks, sizes = meta.chunk_grid.chunk_shape, values.shape
        if n0 % chunks[axis] or sizes[axis] != chunks[axis] or any(s % c for s, c in zip(sizes, chunks)):
            return None
        out = []
        for at in itertools.product(*(range(s // c) for s, c in zip(sizes, chunks))):
            block = values[tuple(slice(i * c, (i + 1) * c) for i, c in zip(at, chunks))]
            key = (i + n0 // chunks[axis] if d == axis else i for d, i in enumerate(at))
            out.append((folder.joinpath("c", *map(str, key)), block))
        return out

    def _templates(self, group: str):
        """Groups already in the store that ``group`` may copy its layout from: the same group of another model
        (``custom/kv/x`` ← ``baseline/kv/x``), then its siblings (``baseline/kv/y`` ← ``baseline/kv/x``)."""
        model, _, rest = group.partition("/")
        parent = group.rpartition("/")[0]
        for other in sorted({g.partition("/")[0] for g in self._started} - {model}):
            if f"{other}/{rest}" in self._started and rest:
                yield f"{other}/{rest}"
            elif not rest and other in self._started:
                yield other
        if parent:
            rel = parent.partition("/")[2]
            for other in sorted(g for g in self._started if g.rpartition("/")[0].partition("/")[2] == rel):
                if other != group and other.count("/") == group.count("/"):
                    yield other

    def _create_like(self, group: str, ds: xr.Dataset, template: str) -> bool:
        """Create ``group``'s (empty, preallocated) arrays from the metadata of ``template``, a group of the same
        variables, dimensions and dtypes that xarray wrote: the zarr v3 ``zarr.json`` of each node, with sizes (and
        whole-axis chunks) set to ``ds``'s. Much cheaper than ``to_zarr``; False (nothing written) if they differ."""
        src, dst = self.tmp / template, self.tmp / group
        nodes = {p.name: json.loads((p / "zarr.json").read_text()) for p in src.iterdir() if (p / "zarr.json").is_file()}
        arrays = {k: m for k, m in nodes.items() if m.get("node_type") == "array"}
        if set(arrays) != set(ds.variables):
            return False
        for name, meta in arrays.items():
            var = ds.variables[name]
            kind = "string" if var.dtype.kind in "OUT" else var.dtype.name
            if list(meta.get("dimension_names") or ()) != list(var.dims) or meta["data_type"] != kind:
                return False
            if "prompt" not in var.dims and not np.array_equal(self._index.get(template, {}).get(name), var.values):
                return False  # index coordinates are copied: they must be equal (known for groups of this run)
        for parent in reversed(list(dst.relative_to(self.tmp).parents)[:-1]):  # implicit groups (custom/kv)
            if not (self.tmp / parent / "zarr.json").is_file():
                (self.tmp / parent).mkdir(parents=True, exist_ok=True)
                (self.tmp / parent / "zarr.json").write_text(json.dumps(GROUP_META))
        dst.mkdir(parents=True, exist_ok=True)
        meta = json.loads((src / "zarr.json").read_text())
        keep = {k: v for k, v in meta.get("attributes", {}).items() if k == "coordinates"}
        meta["attributes"] = {**keep, **ds.attrs}
        (dst / "zarr.json").write_text(json.dumps(meta))
        for name, meta in arrays.items():
            var = ds.variables[name]
            if "prompt" not in var.dims:
                shutil.copytree(src / name, dst / name)  # index coordinates (token, layer): metadata and values
                continue
            chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
            for d, (dim, size) in enumerate(zip(var.dims, var.shape)):
                whole = chunks[d] == meta["shape"][d]
                meta["shape"][d] = max(self.n_prompts or 0, size) if dim == "prompt" else size
                if whole and dim != "prompt":
                    chunks[d] = size
            (dst / name).mkdir()
            (dst / name / "zarr.json").write_text(json.dumps(meta))
        self._started.add(group)
        self._index[group] = self._index[template]
        return True

    def _write_batch(self, model: str, batch, model_attrs: dict | None) -> None:
        n0 = self._written.get(model, 0)
        coords = batch.coords.copy()
        if model not in self._started:
            coords.attrs = encode_attrs(model_attrs or {})
        items = [(model, coords)] + [(f"{model}/{k}", v) for k, v in batch.groups.items()]
        by_xarray = []
        for group, ds in items:
            if group not in self._started:
                if n0:
                    raise ValueError(f"group {group!r} appears after {n0} prompts of {model!r} were written")
                if not any(self._create_like(group, ds, t) for t in self._templates(group)):
                    self._create(group, ds)
                    by_xarray.append(group)
        self._extend([(g, ds) for g, ds in items if g not in by_xarray], n0)
        if by_xarray and self.n_prompts:
            self._resize(model, max(self.n_prompts, n0 + batch.coords.sizes["prompt"]))
        self._written[model] = n0 + batch.coords.sizes["prompt"]
        self._root.attrs["written"] = json.dumps(self._written)  # last: the batch now counts

    def append(self, model: str, batch, model_attrs: dict | None = None) -> None:
        """Append one recorded batch (``record.Batch``, global prompt indices) to ``model``'s branch.

        Prompts already stored for ``model`` are skipped; the rest must continue the branch without a gap."""
        from .record import keep_tokens, select_prompts

        nxt = self.first_prompt + self._queued.get(model, 0)
        index = batch.coords["prompt"].values
        if index.size == 0 or index[-1] < nxt:
            return
        if index[0] < nxt:
            batch = select_prompts(batch, index >= nxt)
            index = batch.coords["prompt"].values
        if index[0] != nxt:
            raise ValueError(f"batch for {model!r} starts at prompt {index[0]}, the store expects prompt {nxt}")
        if self.n_tokens is not None and batch.coords.sizes["token"] > self.n_tokens:
            batch = keep_tokens(batch, self.n_tokens)
        self._queued[model] = self._queued.get(model, 0) + index.size
        self._submit(self._write_batch, model, batch, model_attrs)

    def put(self, group: str, ds: xr.Dataset) -> None:
        """Write a whole node at once (embedding diagnostics, attention maps; dask-backed nodes when merging)."""
        self._submit(self._create, group, ds, "w")

    def commit(self) -> Path:
        self.flush()
        self._stop()
        for model, n in self._written.items():
            self._resize(model, n)
        attrs = {"written": self._written, **self.attrs, "format": FORMAT, "complete": 1}
        self._root.attrs.update(encode_attrs(attrs))
        with warnings.catch_warnings():  # "consolidated metadata is not part of the zarr v3 spec" (known; read fine)
            warnings.simplefilter("ignore", UserWarning)
            zarr.consolidate_metadata(str(self.tmp))
        done = self.tmp
        if self.netcdf:
            done = self.out.with_name(self.out.name + ".partial.nc")
            tree = xr.open_datatree(self.tmp, engine="zarr", chunks={})
            tree.to_netcdf(done, engine="h5netcdf")
            tree.close()
        old = self.out.with_name(self.out.name + ".old")
        if self.out.exists():
            os.replace(self.out, old)
        os.replace(done, self.out)
        _remove(old)
        _remove(self.tmp)
        return self.out


async def _gather(jobs) -> None:
    await asyncio.gather(*jobs)


async def _grow_and_set(arr, axis: int, length: int | None, where, values) -> None:
    if length is not None:
        await arr.resize(arr.shape[:axis] + (length,) + arr.shape[axis + 1 :])
    await arr.setitem(where, values)


def _write_file(item) -> None:
    path, block = item
    path.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(block).tofile(path)


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
