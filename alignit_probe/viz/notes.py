"""The report's words about its own numbers and its store: what a figure's CI marks are (none below ``MIN_CI``
prompts, as the tables), why a table's CI cells are empty, the table cells, and what the store is (a summary store,
when it was recorded). Plain Python, nothing drawn."""

from __future__ import annotations

import datetime

import xarray as xr

from .. import store as st
from ..analysis.stats import MIN_CI, fmt
from .figures import has_ci

RECORDED_KEYS = ("recorded_at",)  # a store's recording time (UTC, ISO 8601), written when it is committed


def ci_caption(points: list[dict], shape: str = "error bars") -> str:
    """What a figure's CI marks are (``shape``: "error bars", "bands"), as its caption says it: drawn only where
    n ≥ ``MIN_CI`` prompts, as the tables show them."""
    ns = [p["n"] for p in points if p and p.get("n")]
    if ns and all(has_ci(p) for p in points if p and p.get("n")):
        return f"{shape}: 95% percentile-bootstrap CI over prompts"
    if not any(has_ci(p) for p in points if p):
        few = (
            f"n = {ns[0]} prompt{'' if ns[0] == 1 else 's'}, fewer than the {MIN_CI}"
            if ns and min(ns) == max(ns)
            else f"every n is below the {MIN_CI} prompts"
        )
        return f"no {shape}: {few} a bootstrap CI needs to say anything; values alone, as in the tables"
    return (
        f"{shape}: 95% percentile-bootstrap CI over prompts, drawn only where n ≥ {MIN_CI} (elsewhere the value alone)"
    )


def ci_table_note(entries: list[dict | None]) -> str:
    """One line under a table whose "[95% CI]" cells are (partly) empty, saying why."""
    if not any(e and e.get("n") and e["n"] < MIN_CI for e in entries):
        return ""
    return (
        f"No CI where n < {MIN_CI} prompts: a bootstrap CI over so few says nothing, so the value is shown alone "
        f"(record {MIN_CI} or more prompts for one)."
    )


def cell_text(entry: dict | None) -> str:
    if not entry:
        return "—"
    if entry["n"] < MIN_CI:
        return fmt(entry["value"])
    return f"{fmt(entry['value'])} [{fmt(entry['ci_low'], 3)}, {fmt(entry['ci_high'], 3)}]"


def recorded_time(tree: xr.DataTree) -> str | None:
    """When the store was recorded, from its root attributes (``RECORDED_KEYS``; ISO times shown to the minute), or
    None where it keeps no such time (nothing is made up)."""
    attrs = st.store_attrs(tree)
    value = next((attrs[k] for k in RECORDED_KEYS if isinstance(attrs.get(k), str) and attrs[k]), None)
    if value is None:
        return None
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        return value
    zone = "" if when.tzinfo is None else " UTC" if not when.utcoffset() else when.strftime(" %z")
    return when.strftime("%Y-%m-%d %H:%M") + zone


def summary_note(tree: xr.DataTree) -> str:
    """For a summary store (``record --summary``, root attribute ``summary``), what it holds; else ""."""
    if not st.store_attrs(tree).get("summary"):
        return ""
    return (
        "This is a summary store (recorded with record --summary): it holds each token's distances to the baseline "
        "(relative L2 and cosine distance, per stage and layer) and any learned-vector diagnostics, not the "
        "activations. The figures and tables below come from those distances; what needs the activations (the "
        "token-embedding PCA) is not shown."
    )
