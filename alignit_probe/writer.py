"""Writing a store: recorded batches streamed into ``<out>.partial``, resumed after a crash, committed by a rename.
The layout is ``store``'s; the file-level zarr work is ``zarr_chunks``'."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import queue
import sys
import threading
import warnings
from pathlib import Path

import xarray as xr
import zarr
from zarr.core.sync import sync as zarr_sync

from . import zarr_chunks as zc
from .store import FORMAT, check_output, decode_attrs, encode_attrs, is_netcdf, remove_path


class StoreWriter:
    """Streams recorded batches into ``<out>.partial`` (a zarr store) and moves it to ``out`` on ``commit()``.

    * Chunks: one chunk holds ``chunk_prompts`` prompts (one batch) and, for ``encoder_layer``, one layer. Numeric
      arrays are stored uncompressed (activations barely compress; zstd costs more than the disk write), so whole
      chunks are written straight to their files, which the zarr v3 format defines as the chunk's little-endian
      bytes in the file ``c.i.j…`` (chunk keys with "." separators: no folder per chunk; one copy, several files
      at once). Strings and partial chunks go through zarr.
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
        self._axes: dict[str, dict[str, int]] = {}  # group -> {array along prompt: its prompt axis}
        self._arrays: dict[tuple[str, str], object] = {}  # (group, name) -> zarr AsyncArray, opened where needed
        self._meta: dict[tuple[str, str], object] = {}  # (group, name) -> metadata read from zarr.json
        self._index: dict[str, dict] = {}  # group -> values of its arrays without ``prompt`` (token, layer)
        self._thread = self._pool = None
        self._error: BaseException | None = None
        self._abort = False
        self.resumed = resume and self._resume()
        if not self.resumed:
            remove_path(self.tmp)
            zarr.open_group(str(self.tmp), mode="w-")
            zc.update_attributes(self.tmp, encode_attrs({**self.attrs, "format": FORMAT, "written": {}}))
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
                remove_path(self.tmp / name)
                written.pop(name, None)
                continue
            self._started.add(name)
            for sub, member in node.members(max_depth=None):
                if isinstance(member, zarr.Group):
                    self._started.add(f"{name}/{sub}")
        self._written = written
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
            remove_path(self.tmp)  # nothing could resume it

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
            enc[name] = {"chunks": tuple(sizes[d] for d in var.dims), "chunk_key_encoding": zc.CHUNK_KEYS}
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
        self._forget(group)  # (re)written: its arrays are read afresh

    def _forget(self, group: str) -> None:
        self._axes.pop(group, None)
        for cache in (self._arrays, self._meta):
            for key in [k for k in cache if k[0] == group]:
                del cache[key]

    def _prompt_axes(self, group: str) -> dict[str, int]:
        """The arrays of ``group`` along ``prompt``: name -> axis (read from their ``zarr.json`` once)."""
        if group not in self._axes:
            dims = {k: list(m.get("dimension_names") or ()) for k, m in zc.group_arrays(self.tmp / group).items()}
            self._axes[group] = {k: d.index("prompt") for k, d in dims.items() if "prompt" in d}
        return self._axes[group]

    def _metadata(self, group: str, name: str):
        """An array's current metadata: its open zarr array's, else its ``zarr.json``'s (no zarr open)."""
        if (group, name) in self._arrays:
            return self._arrays[group, name].metadata
        if (group, name) not in self._meta:
            self._meta[group, name] = zc.array_metadata(self.tmp / group / name)
        return self._meta[group, name]

    def _array(self, group: str, name: str):
        """The zarr ``AsyncArray`` (opened once; used where zarr itself must write or resize)."""
        if (group, name) not in self._arrays:
            self._arrays[group, name] = zarr.open_array(str(self.tmp / group / name), mode="r+").async_array
            self._meta.pop((group, name), None)
        return self._arrays[group, name]

    def _resize(self, model: str, n: int, groups=None) -> None:
        """Set the prompt length of ``model``'s arrays (of ``groups``, default all) to ``n`` (chunks beyond it are
        deleted)."""
        jobs = []
        for group in sorted(groups or (g for g in self._started if g == model or g.startswith(model + "/"))):
            for name, axis in self._prompt_axes(group).items():
                shape = self._metadata(group, name).shape
                if shape[axis] != n:
                    jobs.append(self._array(group, name).resize(shape[:axis] + (n,) + shape[axis + 1 :]))
        zarr_sync(_gather(jobs))

    def _extend(self, items: list[tuple[str, xr.Dataset]], n0: int) -> None:
        """Write each dataset's rows as prompts n0, n0+1, … of its group's arrays along ``prompt``."""
        files, jobs = [], []
        for group, ds in items:
            n = ds.sizes["prompt"]
            for name, axis in self._prompt_axes(group).items():
                values = ds.variables[name].values
                meta = self._metadata(group, name)
                length = n0 + n if meta.shape[axis] < n0 + n else None
                chunk_files = zc.chunk_files(self.tmp / group / name, meta, axis, n0, values)
                if chunk_files is not None:
                    files += chunk_files
                    if length is not None:
                        arr = self._array(group, name)
                        jobs.append(arr.resize(meta.shape[:axis] + (length,) + meta.shape[axis + 1 :]))
                else:
                    where = tuple(slice(n0, n0 + n) if d == axis else slice(None) for d in range(values.ndim))
                    jobs.append(_grow_and_set(self._array(group, name), axis, length, where, values))
        if files:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1))
            list(self._pool.map(zc.write_file, files))
        zarr_sync(_gather(jobs))

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
        """Lay ``group`` out like ``template`` (``zarr_chunks.create_like``); False if their variables differ.
        The template's index values are known for groups of this run only."""
        if template not in self._index:
            return False
        created = zc.create_like(self.tmp, group, ds, template, self.n_prompts, self._index[template])
        if created is None:
            return False
        self._started.add(group)
        self._index[group] = self._index[template]
        self._forget(group)
        self._axes[group] = {k: list(ds.variables[k].dims).index("prompt") for k in created}
        self._meta.update({(group, k): m for k, m in created.items()})
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
        if by_xarray and self.n_prompts:  # xarray wrote them one batch long: preallocate like the others
            self._resize(model, max(self.n_prompts, n0 + batch.coords.sizes["prompt"]), by_xarray)
        self._written[model] = n0 + batch.coords.sizes["prompt"]
        zc.update_attributes(self.tmp, {"written": json.dumps(self._written)})  # last: the batch now counts

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

    def add_warnings(self, group: str, warnings: list[str]) -> None:
        """Add warnings to a group's ``warnings`` attribute (kept once each, after those already stored)."""
        self._submit(self._add_warnings, group, list(warnings))

    def _add_warnings(self, group: str, new: list[str]) -> None:
        node = zc.read_node(self.tmp / group)
        if node is None or not new:
            return
        old = decode_attrs(node.get("attributes", {})).get("warnings") or []
        zc.update_attributes(self.tmp / group, encode_attrs({"warnings": list(dict.fromkeys(old + new))}))

    def put(self, group: str, ds: xr.Dataset) -> None:
        """Write a whole node at once (embedding diagnostics, attention maps; dask-backed nodes when merging)."""
        self._submit(self._create, group, ds, "w")

    def commit(self) -> Path:
        self.flush()
        self._stop()
        for model, n in self._written.items():
            self._resize(model, n)
        attrs = {"written": self._written, **self.attrs, "format": FORMAT, "complete": 1}
        zc.update_attributes(self.tmp, encode_attrs(attrs))
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
        remove_path(old)
        remove_path(self.tmp)
        return self.out


async def _gather(jobs) -> None:
    await asyncio.gather(*jobs)


async def _grow_and_set(arr, axis: int, length: int | None, where, values) -> None:
    if length is not None:
        await arr.resize(arr.shape[:axis] + (length,) + arr.shape[axis + 1 :])
    await arr.setitem(where, values)
