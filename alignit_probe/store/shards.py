"""Shards read as one store, merged into one store, and analysed on a dask.distributed cluster.

``record --shard i/N`` writes one store per shard (``jobs`` says which prompts each holds). ``open_shards`` opens
all N lazily (dask) and concatenates every node along ``prompt`` in prompt order, after checking that they are the
N distinct shards of one job (equal fingerprints). ``merge_shards`` writes that concatenation to one store: it
copies the recorded arrays chunk by chunk (dask reads each shard's chunks and writes them, re-chunked to one
batch per chunk as in an unsharded store); nothing is re-recorded. ``connect`` opens a ``distributed.Client``, on
which every ``.compute()`` of the metrics then runs; the workers read the stores themselves, so they must see the
same paths.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import xarray as xr

from ..errors import ProbeError, ProbeWarning
from . import layout as st
from .writer import StoreWriter

if TYPE_CHECKING:
    from distributed import Client
    from tqdm import tqdm

SHARD_HINT = "write --shard I/N with 0 <= I < N, e.g. --shard 0/4 (shards are numbered from 0)"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` → (i, N); None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ProbeError(f"bad shard {text!r}", SHARD_HINT)
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise ProbeError(f"bad shard {text!r}: there must be at least one shard", SHARD_HINT)
    if i >= n:
        raise ProbeError(f"bad shard {text!r}: shard index {i} is not in 0..{n - 1}", SHARD_HINT)
    return i, n


def shard_name(shard: tuple[int, int] | None) -> str | None:
    return None if shard is None else f"{shard[0]}/{shard[1]}"


def shard_range(n_prompts: int, batch_size: int, shard: tuple[int, int] | None) -> range:
    """Global indices of the prompts that ``shard`` records (all of them without a shard)."""
    if batch_size < 1:
        raise ProbeError(f"batch size {batch_size} is not positive", "pass --batch-size 1 or more")
    if shard is None:
        return range(n_prompts)
    i, n = shard
    batches = -(-n_prompts // batch_size)
    lo, hi = (i * batches // n) * batch_size, ((i + 1) * batches // n) * batch_size
    span = range(min(lo, n_prompts), min(hi, n_prompts))
    if not span:
        raise ProbeError(
            f"shard {i}/{n} has no prompts: {n_prompts} prompts make only {batches} batch(es) of {batch_size}",
            f"use at most {batches} shards, or a smaller --batch-size",
        )
    return span


SHARD_ATTRS = ("shard", "prompt_range", "written", "command", "warnings", "recorded_at")


def _shard_of(path, attrs: dict) -> tuple[int, int]:
    if not attrs.get("shard") or not attrs.get("fingerprint"):
        raise ProbeError(f"{path} is not a shard", "pass one unsharded store, or every store of `record --shard I/N`")
    return parse_shard(attrs["shard"])


def open_shards(paths: str | os.PathLike | Iterable[str | os.PathLike], chunks: dict | None = None) -> xr.DataTree:
    """One store, or all shards of one recording job as one lazily concatenated DataTree (dask-backed).

    A single path is opened with ``store.open_store(path, chunks)``."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if len(paths) == 1:
        tree = st.open_store(paths[0], chunks=chunks)
        attrs = st.store_attrs(tree)
        if attrs.get("shard"):  # a part of a job, read alone: said, as its rows are that part's
            i, n = parse_shard(attrs["shard"])
            a, b = (attrs.get("prompt_range") or [None, None])[:2]
            warnings.warn(
                f"{paths[0]} is shard {i}/{n} of a recording job (prompts {a}–{b - 1 if b else '?'} only): pass all "
                f"{n} shards together, or merge them, for the whole job",
                ProbeWarning,
                stacklevel=2,
            )
        return tree
    trees = [st.open_store(p, chunks={}) for p in paths]
    attrs = [st.store_attrs(t) for t in trees]
    shards = [_shard_of(p, a) for p, a in zip(paths, attrs)]
    for p, a, (_, n) in zip(paths, attrs, shards):
        if a["fingerprint"] != attrs[0]["fingerprint"] or n != shards[0][1]:
            raise ProbeError(
                f"{p} and {paths[0]} are shards of different recording jobs",
                "pass the shards of one `record` command (same prompts, models and options)",
            )
    n = shards[0][1]
    seen = sorted(i for i, _ in shards)
    if seen != list(range(n)):
        names = lambda ks: ", ".join(f"{i}/{n}" for i in ks)  # noqa: E731
        dup, missing = sorted({i for i in seen if seen.count(i) > 1}), sorted(set(range(n)) - set(seen))
        what = "; ".join(
            ([f"shard {names(dup)} given twice"] if dup else [])
            + ([f"shard {names(missing)} missing"] if missing else [])
        )
        raise ProbeError(f"{what} among {len(paths)} stores", f"pass each of the {n} shards exactly once")
    order = sorted(range(len(trees)), key=lambda k: attrs[k]["prompt_range"][0])
    trees = [trees[k] for k in order]
    nodes = {}
    for node in trees[0].subtree:
        parts = [t[node.path].to_dataset(inherit=False) for t in trees]
        if "prompt" in parts[0].dims:
            ds = xr.concat(
                parts,
                dim="prompt",
                data_vars="all",
                coords="different",
                compat="equals",
                join="exact",
                combine_attrs="override",
            )
        else:
            ds = parts[0]
        if "warnings" in ds.attrs:  # each shard warns about its own prompts
            warned = [w for p in parts for w in st.decode_attrs(dict(p.attrs)).get("warnings", [])]
            ds.attrs["warnings"] = st.encode_attrs({"warnings": list(dict.fromkeys(warned))})["warnings"]
        nodes[node.path] = ds
    index = nodes[f"/{st.models(trees[0])[0]}"]["prompt"].values
    if (index[1:] <= index[:-1]).any():
        raise ProbeError("the shards' prompt indices overlap", "pass the shards of one `record` command")
    root = {k: v for k, v in trees[0].attrs.items() if k not in SHARD_ATTRS}
    root.update(
        st.encode_attrs(
            {
                "shards": n,
                "written": {
                    m: int(sum(st.store_attrs(t)["written"].get(m, 0) for t in trees)) for m in attrs[0]["written"]
                },
                "prompt_range": [int(index[0]), int(index[-1]) + 1],
                "warnings": list(dict.fromkeys(w for a in attrs for w in a.get("warnings", []))),
                "command": [a.get("command") for a in attrs],
                "recorded_at": max((a.get("recorded_at") or "" for a in attrs), default="") or None,  # the last
            }
        )
    )
    nodes["/"] = xr.Dataset(attrs=root)
    return xr.DataTree.from_dict(nodes)


def merge_shards(
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: tqdm | None = None,
) -> Path:
    """Write the shards of one job as one store at ``out`` (zarr, or ``.nc``), copying their chunks."""
    paths = list(paths)
    if len(paths) < 2:
        raise ProbeError("merge needs the stores of at least two shards", "pass every shard written by --shard I/N")
    tree = open_shards(paths)
    attrs = st.store_attrs(tree)
    batch = (attrs.get("options") or {}).get("batch_size")
    with StoreWriter(
        out, overwrite=overwrite, attrs={**attrs, "merged_from": len(paths)}, chunk_prompts=batch, resume=False
    ) as writer:
        for node in tree.subtree:
            if node.path != "/":
                writer.put(node.path.lstrip("/"), node.to_dataset(inherit=False))
            if progress is not None:
                progress.update(1)
        return writer.commit()


def connect(address: str) -> Client:
    """A ``distributed.Client`` for ``address`` (a context manager; metrics computed inside it run there)."""
    from distributed import Client

    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError) as e:
        raise ProbeError(
            f"cannot reach the dask scheduler at {address} ({type(e).__name__})",
            "start one with `dask scheduler` and workers with `dask worker ADDRESS`, or drop --scheduler",
        ) from None
