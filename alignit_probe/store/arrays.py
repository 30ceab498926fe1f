"""The arrays of a partial store along ``prompt``: created, grown, written and trimmed, with their metadata cached.

Kept apart from ``writer`` so that the writer's own rules (order of writes, resume, commit) read without the zarr
detail. The file-level zarr work (``zarr.json``, whole chunk files) is ``zarr_chunks``'."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import xarray as xr
import zarr
from zarr.core.sync import sync as zarr_sync

from . import zarr_chunks as zc
from . import zarr_layout as zl

if TYPE_CHECKING:
    import numpy as np
    from zarr.core.metadata.v3 import ArrayV3Metadata


class PartialArrays:
    """The zarr arrays of the store at ``root``, by group (``<model>``, ``<model>/text``, ``<model>/kv/<path>``).

    * ``started``: the groups that exist. ``index``: for each group created by this run, the values of its arrays
      without ``prompt`` (token, layer); a group laid out from a template must have the same (``templates``).
    * Metadata is read from ``zarr.json`` once and cached (no zarr open, no event loop: opening costs more than a
      small batch's write); a zarr array is opened only where zarr itself must write or resize it.
    * ``chunk_prompts``: prompts per chunk (one batch); each ``layer`` is a chunk of its own.
    """

    def __init__(self, root: Path, chunk_prompts: int | None = None):
        self.root, self.chunk_prompts = root, chunk_prompts
        self.started: set[str] = set()
        self.index: dict[str, dict] = {}
        self._axes: dict[str, dict[str, int]] = {}  # group -> {array along prompt: its prompt axis}
        self._arrays: dict[tuple[str, str], object] = {}  # (group, name) -> zarr AsyncArray, opened where needed
        self._meta: dict[tuple[str, str], object] = {}  # (group, name) -> metadata read from zarr.json
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.layouts: dict = {}  # templates read, metadata parsed, plans made (zarr_layout.plan_like)

    def encoding(self, ds: xr.Dataset) -> tuple[dict, dict]:
        """zarr encoding (chunks, compressors) of the variables along ``prompt`` and of the numeric index
        coordinates (token, layer: one uncompressed chunk each), and the dask chunks along ``prompt``.

        Numeric arrays are stored uncompressed: activations barely compress, zstd costs more than the disk write,
        and uncompressed whole chunks can be written straight to their files (``extend``)."""
        enc, chunks = {}, {}
        for name, var in ds.variables.items():
            if var.dims == (name,) and name != "prompt" and var.dtype.kind in "fiu" and var.size:
                enc[name] = {"chunks": var.shape, "chunk_key_encoding": zc.CHUNK_KEYS, "compressors": None}
            if "prompt" not in var.dims:
                continue
            sizes = {d: (1 if d == "layer" else s) for d, s in var.sizes.items()}
            sizes["prompt"] = self.chunk_prompts or var.sizes["prompt"]
            enc[name] = {"chunks": tuple(sizes[d] for d in var.dims), "chunk_key_encoding": zc.CHUNK_KEYS}
            if var.dtype.kind in "fiub":
                enc[name]["compressors"] = None
            chunks.update(sizes)
        return enc, chunks

    def create(self, group: str, ds: xr.Dataset, mode: str = "a") -> None:
        """Write ``ds`` as ``group`` through xarray (a new group, or a whole node with ``mode="w"``)."""
        ds = ds.copy()
        for var in ds.variables.values():
            var.encoding = {}
        enc, chunks = self.encoding(ds)
        if ds.chunks:
            ds = ds.chunk({d: c for d, c in chunks.items() if d in ds.dims})
        ds.to_zarr(self.root, group=group, mode=mode, consolidated=False, encoding=enc)
        self.started.add(group)
        self.index[group] = {k: v.values for k, v in ds.variables.items() if "prompt" not in v.dims}
        self.forget(group)  # (re)written: its arrays are read afresh

    def add(self, group: str, index: dict, created: dict[str, object], axes: dict[str, int]) -> None:
        """Take in a group laid out at the file level (``templates.plan_like``): its index values, the metadata
        of its arrays along ``prompt`` and their prompt axes, so that they need not be read back."""
        self.started.add(group)
        self.index[group] = index
        self.forget(group, layouts=False)  # its plan stays: it is this group's layout, kept as a template
        self._axes[group] = dict(axes)
        self._meta.update({(group, k): m for k, m in created.items()})

    def forget(self, group: str, layouts: bool = True) -> None:
        """Drop what is cached of ``group``'s arrays (it was rewritten), and of its layout as a template."""
        self._axes.pop(group, None)
        for cache in (self._arrays, self._meta):
            for key in [k for k in cache if k[0] == group]:
                del cache[key]
        for key in [k for k in self.layouts if k[1] == group] if layouts else []:  # ("arrays", template), …
            del self.layouts[key]

    def prompt_axes(self, group: str) -> dict[str, int]:
        """The arrays of ``group`` along ``prompt``: name -> axis (read from their ``zarr.json`` once)."""
        if group not in self._axes:
            dims = {k: list(m.get("dimension_names") or ()) for k, m in zc.group_arrays(self.root / group).items()}
            self._axes[group] = {k: d.index("prompt") for k, d in dims.items() if "prompt" in d}
        return self._axes[group]

    def metadata(self, group: str, name: str) -> ArrayV3Metadata:
        """An array's current metadata: its open zarr array's, else its ``zarr.json``'s (no zarr open)."""
        if (group, name) in self._arrays:
            return self._arrays[group, name].metadata
        if (group, name) not in self._meta:
            self._meta[group, name] = zc.array_metadata(self.root / group / name)
        return self._meta[group, name]

    def array(self, group: str, name: str) -> zarr.AsyncArray:
        """The zarr ``AsyncArray`` (opened once; used where zarr itself must write or resize)."""
        if (group, name) not in self._arrays:
            self._arrays[group, name] = zarr.open_array(str(self.root / group / name), mode="r+").async_array
            self._meta.pop((group, name), None)
        return self._arrays[group, name]

    def resize(self, model: str, n: int, groups: Iterable[str] | None = None) -> None:
        """Set the prompt length of ``model``'s arrays (of ``groups``, default all) to ``n`` (chunks beyond it are
        deleted)."""
        jobs = []
        for group in sorted(groups or (g for g in self.started if g == model or g.startswith(model + "/"))):
            for name, axis in self.prompt_axes(group).items():
                shape = self.metadata(group, name).shape
                if shape[axis] != n:
                    jobs.append(self.array(group, name).resize(shape[:axis] + (n,) + shape[axis + 1 :]))
        zarr_sync(gather(jobs))

    def extend(self, items: list[tuple[str, xr.Dataset]], n0: int) -> None:
        """Write each dataset's rows as prompts n0, n0+1, … of its group's arrays along ``prompt``.

        Whole uncompressed chunks go straight to their files, several at once (the zarr v3 format defines them as
        the chunk's bytes; one copy, no event loop); strings and partial chunks go through zarr."""
        files, jobs = [], []
        for group, ds in items:
            n = ds.sizes["prompt"]
            for name, axis in self.prompt_axes(group).items():
                values = ds.variables[name].values
                meta = self.metadata(group, name)
                length = n0 + n if meta.shape[axis] < n0 + n else None
                chunk_files = zc.chunk_files(self.root / group / name, meta, axis, n0, values)
                if chunk_files is not None:
                    files += chunk_files
                    if length is not None:
                        arr = self.array(group, name)
                        jobs.append(arr.resize(meta.shape[:axis] + (length,) + meta.shape[axis + 1 :]))
                else:
                    where = tuple(slice(n0, n0 + n) if d == axis else slice(None) for d in range(values.ndim))
                    jobs.append(grow_and_set(self.array(group, name), axis, length, where, values))
        if files:
            list(self.pool().map(zc.write_file, files))
        zarr_sync(gather(jobs))

    def write_plans(self, plans: list) -> None:
        """Write the files of new groups laid out at the file level (``zarr_layout.write_plan``), side by side."""
        if plans:
            list(self.pool().map(zl.write_plan, plans))

    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """The threads that write files (started at the first use)."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1))
        return self._pool

    def close(self) -> None:
        """Stop the threads that write chunk files (a later ``extend`` starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


async def gather(jobs: Iterable[Awaitable[object]]) -> None:
    """Run zarr's coroutines together (one ``zarr_sync`` per batch, not one per array)."""
    await asyncio.gather(*jobs)


async def grow_and_set(
    arr: zarr.AsyncArray, axis: int, length: int | None, where: tuple[slice, ...], values: np.ndarray
) -> None:
    """Grow ``arr`` along ``axis`` to ``length`` (None: it is long enough), then write ``values`` at ``where``: in
    this order, so the write never lands beyond the array's end."""
    if length is not None:
        await arr.resize(arr.shape[:axis] + (length,) + arr.shape[axis + 1 :])
    await arr.setitem(where, values)
