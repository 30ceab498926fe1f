"""``compare``: one store (or every shard of one job) → a pandas DataFrame with exactly the columns of the
``compare --json`` rows (``schema.ROW_COLUMNS``), in data-flow and UNet order. Imports no torch."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import xarray as xr

from ..arguments import as_count, as_list, as_names
from ..errors import ProbeError
from ..schema import ATTENTION_STAGE, BASELINE, ROW_COLUMNS, STAGES
from .metrics import compare_rows

if TYPE_CHECKING:
    import pandas as pd
    from tqdm import tqdm


def open_any(store: xr.DataTree | str | os.PathLike | Iterable[str | os.PathLike]) -> xr.DataTree:
    """A DataTree as given, or the store(s) at a path / list of paths (shards read as one store)."""
    if isinstance(store, xr.DataTree):
        return store
    from ..store.shards import open_shards

    if isinstance(store, (str, os.PathLike)):
        return open_shards([store])
    paths = as_list(store, "store", (str, os.PathLike), "a store path, a list of shard paths or a DataTree")
    if not paths:
        raise ProbeError("no store given", "pass a store path, a list of shard paths or a DataTree")
    return open_shards(paths)


def compare(
    store: xr.DataTree | str | os.PathLike | Iterable[str | os.PathLike],
    *,
    reference: str = BASELINE,
    stages: str | Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: tqdm | None = None,
) -> pd.DataFrame:
    """Distances of every model to ``reference`` per (model, stage, layer, role, metric), with percentile-bootstrap
    95% CIs over prompts: a ``pandas.DataFrame`` whose columns are those of ``compare --json``. ``stages``: all
    (None), or those named; naming only stages the store lacks is an error, as for the CLI's ``--stage``."""
    import pandas as pd

    from ..store import layout as st

    every = (*STAGES, ATTENTION_STAGE)
    given = stages is not None
    stages = list(dict.fromkeys(as_names(stages, "stages") if given else every))
    unknown = [x for x in stages if x not in every]
    if unknown or not stages:
        what = f"unknown stage {unknown[0]!r}" if unknown else "no stages given"
        raise ProbeError(what, "choose among: " + ", ".join(every))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ProbeError(f"seed must be a whole number, not {seed!r}", "pass seed=0 (any int)")
    if isinstance(store, dict):
        raise ProbeError("store takes a store path, a list of shard paths or a DataTree, not dict", "pass a path")
    tree = open_any(store)
    if reference not in st.models(tree):
        raise ProbeError(f"no model {reference!r} in the store", "choose among: " + ", ".join(st.models(tree)))
    n_boot = as_count(n_boot, "n_boot")
    rows = compare_rows(tree, reference=reference, stages=stages, n_boot=n_boot, seed=seed, progress=progress)
    rows = [r for r in rows if r["stage"] in stages]  # attention maps' rows come with every call
    if given and not rows and len(st.models(tree)) > 1:  # as the CLI's --stage
        raise ProbeError(
            f"no rows match stages={stages}: the store holds no such stage", "choose stages the store holds"
        )
    return pd.DataFrame(rows, columns=list(ROW_COLUMNS))
