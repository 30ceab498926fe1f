"""The store writer alone (``bench_record.py --writer``): every batch of the recording computed first and kept on the
host, then only written, by ``StoreWriter`` with its writer thread as on a GPU, alternated with the I/O floor (the
same bytes as plain files). It says whether the writer keeps pace with the disk on any machine: on a CPU the
recording itself is bounded by the compute, so its share of the I/O floor's speed says little about the writer."""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from alignit_probe.models.load import ModelPair
from alignit_probe.record.batch import record_batch
from alignit_probe.store.batch import Batch
from alignit_probe.store.writer import StoreWriter
from alignit_probe.text.concepts import Concept
from alignit_probe.text.tables import tokenize_table


def host_batches(
    pair: ModelPair, concepts: list[Concept], texts: list[str], batch_size: int, store_dtype: str
) -> list[tuple[str, Batch]]:
    """(model, batch) of the whole recording, in the order ``record_store`` appends them, on the host."""
    span = range(len(texts))
    custom, base, _notes = tokenize_table(texts, span, pair.custom, pair.baseline.tokenizer, concepts)
    out = []
    with torch.no_grad():
        for name, pipe, table in (("baseline", pair.baseline, base), ("custom", pair.custom, custom)):
            for start in range(0, len(texts), batch_size):
                batch = record_batch(pipe, table[start : start + batch_size], start, store_dtype=np.dtype(store_dtype))
                out.append((name, batch))
    return out


def write_alone(
    batches: list[tuple[str, Batch]], out: Path, batch_size: int, n_prompts: int
) -> tuple[float, list[int]]:
    """Seconds to write ``batches`` into a new store at ``out`` (writer thread, commit included), and the sizes of
    its files; the store is removed afterwards, as the recordings are."""
    t = time.perf_counter()
    with StoreWriter(
        out, overwrite=True, attrs={}, chunk_prompts=batch_size, n_prompts=n_prompts, background=True
    ) as writer:
        for name, batch in batches:
            writer.append(name, batch, {})
        done = writer.commit()
    seconds = time.perf_counter() - t
    sizes = [f.stat().st_size for f in done.rglob("*") if f.is_file()]
    shutil.rmtree(done)
    return seconds, sizes


def report_writer_alone(
    batches: list[tuple[str, Batch]],
    folder: Path,
    batch_size: int,
    n_prompts: int,
    repeats: int,
    io_floor: Callable[[int, list[int]], float],
) -> None:
    """Time the writer alone and the I/O floor, alternated, and print the writer's share of the I/O floor's speed
    (``io_floor(k, sizes)`` writes files of those sizes as plain files and returns its seconds)."""
    write_alone(batches, folder / "writer-warmup.zarr", batch_size, n_prompts)
    writes, ios = [], []
    for k in range(repeats):
        seconds, sizes = write_alone(batches, folder / f"writer{k}.zarr", batch_size, n_prompts)
        writes.append(seconds)
        ios.append(io_floor(100 + k, sizes))
    size = sum(sizes)
    per = sum(batch.coords.sizes["prompt"] for _, batch in batches)  # prompts x models
    share = statistics.median(i / w for i, w in zip(ios, writes))
    print(
        f"  writer alone (the {len(batches)} batches computed first, then written by the writer thread; "
        f"{size / 2**20:.0f} MiB) {statistics.median(writes) / per * 1e3:.1f} ms/prompt   runs (s): "
        f"{' '.join(f'{t:.2f}' for t in writes)}"
    )
    print(
        f"  writer alone reaches {100 * share:.0f}% of the I/O floor's speed (median of adjacent pairs; I/O floor "
        f"runs (s): {' '.join(f'{t:.2f}' for t in ios)})"
    )
