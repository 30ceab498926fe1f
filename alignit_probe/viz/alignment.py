"""The report's first section, "alignment": how well each branch follows the prompt, as the world scores it exactly —
context accuracy (the background and position the prompt names) and concept fidelity (the object is the concept),
with 95 % bootstrap intervals — from ``world eval`` rows: scored live (the demo), the shipped table, or a user's
``world eval --json`` file. Then the scored images themselves."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.stats import fmt
from .figures import drawing, new_figure, png_bytes

ATTRIBUTES = ("background", "position", "concept_fidelity")
LABELS = {"background": "background", "position": "position", "concept_fidelity": "concept fidelity"}
MODEL_ORDER = ("baseline", "custom", "alignit")


@dataclass
class AlignmentTable:
    """``world eval`` rows ({"model", "attribute", "accuracy", "ci_low", "ci_high", "n"}, optionally "method")
    under a ``title``, with a ``note`` saying where they come from (command, seed, samples)."""

    title: str
    rows: list[dict]
    note: str = ""


@dataclass
class Alignment:
    """What the section shows: ``tables`` side by side (the live scores first) and ``images`` ({title: PNG path}:
    the scored image grids)."""

    tables: list[AlignmentTable]
    images: dict[str, str | os.PathLike] = field(default_factory=dict)


def row_key(row: dict) -> tuple:
    model = row["model"]
    rank = MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)
    return (row.get("method") or "", rank, model)


def table_context(table: AlignmentTable) -> dict:
    """One HTML table: a row per (method, model), a cell per attribute: ``accuracy [low, high]`` and n."""
    attributes = [a for a in ATTRIBUTES if any(r["attribute"] == a for r in table.rows)]
    attributes += sorted({r["attribute"] for r in table.rows} - set(attributes))
    cells: dict[tuple, dict] = {}
    for r in sorted(table.rows, key=row_key):
        cells.setdefault((r.get("method") or "", r["model"]), {})[r["attribute"]] = r
    body = []
    for (method, model), by in cells.items():
        out = []
        for a in attributes:
            r = by.get(a)
            out.append("—" if r is None else f"{fmt(r['accuracy'], 2)} [{fmt(r['ci_low'], 2)}, {fmt(r['ci_high'], 2)}]")
        n = sorted({by[a]["n"] for a in attributes if a in by})
        body.append(dict(method=method, model=model, cells=out, n=", ".join(map(str, n))))
    return dict(
        title=table.title,
        note=table.note,
        methods=any(r.get("method") for r in table.rows),
        attributes=[LABELS.get(a, a) for a in attributes],
        rows=body,
    )


def alignment_figure(tables: list[AlignmentTable]) -> bytes:
    """Accuracy with its 95 % interval per (method, model), one panel per attribute, one marker per table."""
    shown = [a for a in ATTRIBUTES if any(r["attribute"] == a for t in tables for r in t.rows)]
    labels: list[str] = []
    for t in tables:
        for r in sorted(t.rows, key=row_key):
            label = f"{r['method']} · {r['model']}" if r.get("method") else r["model"]
            if label not in labels:
                labels.append(label)
    with drawing() as sns:
        palette = sns.color_palette("colorblind", len(tables))
        fig = new_figure(3.3 * len(shown) + 1.5, 0.32 * len(labels) + 1.3)
        axes = fig.subplots(1, len(shown), sharey=True, squeeze=False)[0]
        for ax, attribute in zip(axes, shown):
            for k, t in enumerate(tables):
                offset = (k - (len(tables) - 1) / 2) * 0.22
                for r in (r for r in t.rows if r["attribute"] == attribute):
                    label = f"{r['method']} · {r['model']}" if r.get("method") else r["model"]
                    y = labels.index(label) + offset
                    lo, hi = r["ci_low"], r["ci_high"]
                    ax.plot([lo, hi], [y, y], color=palette[k], lw=2)
                    ax.plot([r["accuracy"]], [y], "o", color=palette[k], ms=5, label=t.title)
            ax.set_xlim(-0.03, 1.03)
            ax.set_title(LABELS.get(attribute, attribute))
            ax.set_xlabel("accuracy (95% CI)")
        axes[0].set_yticks(range(len(labels)), labels)
        axes[0].invert_yaxis()
        handles, names = axes[0].get_legend_handles_labels()
        unique = {n: h for h, n in zip(handles, names)}
        fig.legend(unique.values(), unique.keys(), loc="outside upper center", ncol=len(unique), frameon=False)
        return png_bytes(fig)


def alignment_section(alignment: Alignment | None) -> dict | None:
    """The template's values: tables, the figure (data URI) and the scored images."""
    from .sections import data_uri, images_section

    if alignment is None or not (alignment.tables or alignment.images):
        return None
    tables = [t for t in alignment.tables if t.rows]
    return dict(
        tables=[table_context(t) for t in tables],
        figure=data_uri(alignment_figure(tables)) if tables else None,
        images=images_section({k: Path(v) for k, v in alignment.images.items()}),
    )
