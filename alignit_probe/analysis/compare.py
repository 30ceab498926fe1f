"""``compare``: one store (or every shard of one job) → a pandas DataFrame with exactly the columns of the
``compare --json`` rows (``schema.ROW_COLUMNS``), in data-flow and UNet order. Imports no torch."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import xarray as xr

from ..schema import BASELINE, ROW_COLUMNS, STAGES
from .metrics import compare_rows

if TYPE_CHECKING:
    import pandas as pd
    from tqdm import tqdm


def open_any(store: xr.DataTree | str | os.PathLike | Iterable[str | os.PathLike]) -> xr.DataTree:
    """A DataTree as given, or the store(s) at a path / list of paths (shards read as one store)."""
    if isinstance(store, xr.DataTree):
        return store
    from ..store.shards import open_shards

    return open_shards([store] if isinstance(store, (str, os.PathLike)) else list(store))


def compare(
    store: xr.DataTree | str | os.PathLike | Iterable[str | os.PathLike],
    *,
    reference: str = BASELINE,
    stages: Sequence[str] = STAGES,
    n_boot: int = 1000,
    seed: int = 0,
    progress: tqdm | None = None,
) -> pd.DataFrame:
    """Distances of every model to ``reference`` per (model, stage, layer, role, metric), with percentile-bootstrap
    95% CIs over prompts: a ``pandas.DataFrame`` whose columns are those of ``compare --json``."""
    import pandas as pd

    rows = compare_rows(
        open_any(store), reference=reference, stages=stages, n_boot=n_boot, seed=seed, progress=progress
    )
    return pd.DataFrame(rows, columns=list(ROW_COLUMNS))
