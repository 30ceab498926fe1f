"""Writing a store: recorded batches streamed into ``<out>.partial``, resumed after a crash, committed by a rename.

The layout is ``layout``'s. The parts: ``arrays`` (the partial store's arrays and their chunk writes),
``templates`` (new groups laid out like existing ones), ``resume`` (taking up a partial store), ``background``
(the writer thread) and ``export`` (netCDF); ``zarr_chunks`` does the file-level zarr work."""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import xarray as xr
import zarr

from . import zarr_chunks as zc
from .arrays import PartialArrays
from .background import BackgroundWriter
from .batch import Batch, keep_tokens, select_prompts
from .export import export_netcdf
from .layout import FORMAT, TOKEN_COORDS, check_output, decode_attrs, encode_attrs, is_netcdf, remove_path
from .resume import resume as resume_partial
from .templates import plan_like, plan_new, templates


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
      the caller, so the next batch is computed while this one is written (worth it when a GPU computes). Either
      way every batch appended before a failure of the caller is written and counted when the ``with`` block
      exits; only a batch whose own write failed (and those after it) is not.
    * Resume: when ``<out>.partial`` exists and its ``fingerprint`` and ``shard`` attributes equal those in ``attrs``,
      every model is trimmed back to its ``written`` count and recording continues from there (``written(model)``);
      ``append`` drops prompts that are already stored, so a caller may also start over from the first prompt. A
      partial store of another job that holds prompts is refused, or replaced with ``overwrite`` (a note on
      stderr). Without a ``fingerprint`` (or with ``resume=False``) nothing is resumed.
    * ``n_tokens``: token positions beyond it are dropped from every batch (``--drop-padding``).
    * ``.nc`` outputs are converted from the zarr partial store on ``commit()``.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        overwrite: bool = False,
        attrs: dict | None = None,
        chunk_prompts: int | None = None,
        n_prompts: int | None = None,
        n_tokens: int | None = None,
        first_prompt: int = 0,
        resume: bool = True,
        background: bool = True,
        log=None,
    ):
        self.out = check_output(out, overwrite)
        self.tmp = self.out.with_name(self.out.name + ".partial")
        self.netcdf = is_netcdf(self.out)
        self.attrs = {k: v for k, v in (attrs or {}).items() if k != "complete"}  # (a merge's come from stores)
        self.chunk_prompts, self.n_prompts, self.n_tokens = chunk_prompts, n_prompts, n_tokens
        self.first_prompt, self.background = first_prompt, background
        self.log = log if log is not None else sys.stderr
        self._arrays = PartialArrays(self.tmp, chunk_prompts)
        self._writes = BackgroundWriter() if background else None
        written = resume_partial(self._arrays, self.attrs, n_prompts, self.log, overwrite) if resume else None
        self.resumed = written is not None
        if not self.resumed:
            remove_path(self.tmp)
            zarr.open_group(str(self.tmp), mode="w-")
            zc.update_attributes(self.tmp, encode_attrs({**self.attrs, "format": FORMAT, "written": {}}))
        self._written: dict[str, int] = dict(written or {})  # persisted: prompts fully written per model (writes)
        self._queued: dict[str, int] = dict(self._written)  # accepted by append (caller's thread)

    def written(self, model: str) -> int:
        """Prompts of this job already accepted for ``model`` (stored, or queued for writing)."""
        return self._queued.get(model, 0)

    # ------------------------------------------------------------------------------------------------ order of writes
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # every job handed over is run, also on a failure, as it would have been in the caller's thread: a partial
        # store then holds each batch that append accepted (resume starts after it)
        self._stop()
        if exc_type is not None and self.attrs.get("fingerprint") is None:
            remove_path(self.tmp)  # nothing could resume it

    def _submit(self, fn, *args) -> None:
        if self._writes is None:
            fn(*args)
        else:
            self._writes.submit(fn, *args)

    def flush(self) -> None:
        """Wait until every appended batch is on disk."""
        if self._writes is not None:
            self._writes.flush()

    def _stop(self) -> None:
        if self._writes is not None:
            self._writes.close()
        self._arrays.close()

    # ------------------------------------------------------------------------------------------------ writes
    def _write_batch(self, model: str, batch: Batch, model_attrs: dict | None) -> None:
        arrays = self._arrays
        n0 = self._written.get(model, 0)
        coords = batch.coords.copy()
        if model not in arrays.started:
            coords.attrs = encode_attrs(model_attrs or {})
        items = [(model, coords)] + [(f"{model}/{k}", v) for k, v in batch.groups.items()]
        by_xarray, plans = [], []
        for group, ds in items:
            if group not in arrays.started:
                if n0:
                    raise ValueError(f"group {group!r} appears after {n0} prompts of {model!r} were written")
                plan = next(
                    (
                        p
                        for t in templates(group, arrays.started)
                        if (p := plan_like(arrays, group, ds, t, self.n_prompts))
                    ),
                    None,
                ) or plan_new(arrays, group, ds, self.n_prompts)
                if plan is None:
                    arrays.create(group, ds)
                    by_xarray.append(group)
                else:
                    plans.append(plan)
        arrays.write_plans(plans)
        arrays.extend([(g, ds) for g, ds in items if g not in by_xarray], n0)
        if by_xarray and self.n_prompts:  # xarray wrote them one batch long: preallocate like the others
            arrays.resize(model, max(self.n_prompts, n0 + batch.coords.sizes["prompt"]), by_xarray)
        self._written[model] = n0 + batch.coords.sizes["prompt"]
        zc.update_attributes(self.tmp, {"written": json.dumps(self._written)})  # last: the batch now counts

    def append(self, model: str, batch: Batch, model_attrs: dict | None = None) -> None:
        """Append one recorded batch (``store.batch.Batch``, global prompt indices) to ``model``'s branch.

        Prompts already stored for ``model`` are skipped; the rest must continue the branch without a gap."""
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
        """Write a whole node at once (embedding diagnostics, attention maps; dask-backed nodes when merging). Token
        labels a node carries (maps from ``Probe.attention``) are the branch's, kept once in its group."""
        if "/" in group.strip("/"):  # a node under a branch (not the branch's own group, which merges write)
            ds = ds.drop_vars([c for c in TOKEN_COORDS if c in ds.coords and "token" in ds[c].dims])
        self._submit(self._arrays.create, group, ds, "w")

    def commit(self) -> Path:
        """Trim every model to what was written, mark the store complete and move it to ``out`` (replacing what
        was there only now, so a failure before leaves the old output in place)."""
        self.flush()
        self._stop()
        for model, n in self._written.items():
            self._arrays.resize(model, n)
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        attrs = {"written": self._written, "recorded_at": now, **self.attrs, "format": FORMAT, "complete": 1}
        zc.update_attributes(self.tmp, encode_attrs(attrs))
        zc.consolidate(self.tmp)
        done = self.tmp
        if self.netcdf:
            done = export_netcdf(self.tmp, self.out.with_name(self.out.name + ".partial.nc"))
        old = self.out.with_name(self.out.name + ".old")
        if self.out.exists():
            os.replace(self.out, old)
        os.replace(done, self.out)
        remove_path(old)
        remove_path(self.tmp)
        return self.out
