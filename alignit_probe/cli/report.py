"""``alignit-probe report``: the diagnostic report of a store (or every shard of one). ``--out FILE.html``: one
self-contained HTML page (``viz.report``: figures embedded, nothing fetched). ``--out FOLDER``: drift figures (per
model, and against model for several customized models), tidy rows (JSON), a markdown summary and the same
``report.html``. Either is written whole or not at all."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ProbeError
from .common import Subparsers, json_safe, out_dir, staged_folder, subparser

if TYPE_CHECKING:
    import xarray as xr

    from ..viz.alignment import Alignment


def html_path(path: str, overwrite: bool) -> Path:
    out = Path(path)
    if out.is_dir():
        raise ProbeError(f"output {out} is a folder", "pass a file name ending in .html, or a folder without .html")
    if out.exists() and not overwrite:
        raise ProbeError(f"output {out} already exists", "pass --overwrite to replace it, or choose another --out")
    if not out.parent.exists():
        raise ProbeError(f"output folder {out.parent} does not exist", "create it first or choose another --out")
    return out


def write_folder(tree: xr.DataTree, rows: list[dict], out: Path, stores: Iterable[str | os.PathLike]) -> list[Path]:
    """rows.json, the drift (and checkpoint) figures and summary.md into ``out``."""
    from .. import store as st
    from ..analysis.stats import MIN_CI
    from ..viz.drift import checkpoint_figure, drift_figure
    from ..viz.notes import ci_table_note
    from ..viz.sections import ROLES, checkpoint_run
    from ..viz.stages import WHOLE_PROMPT, stage_summary

    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    figures = [drift_figure(rows, out / f"drift_{m}.png", m) for m in ("relative_l2", "cosine_distance")]
    customs = st.store_attrs(tree).get("custom_models") or []
    if len(customs) > 1:  # as the HTML report: lines only between checkpoints of one run
        steps = checkpoint_run(tree)
        figures += [
            checkpoint_figure(rows, out / f"{'checkpoints' if steps else 'models'}_{m}.png", m, ROLES, steps)
            for m in ("relative_l2", "cosine_distance")
        ]
    lines = [f"# alignit-probe report: {', '.join(map(str, stores))}", ""]
    for model in st.models(tree):
        a = st.model_attrs(tree, model)
        ids = a.get("custom_ids") or [a.get("model_id")]
        lines.append(f"- **{model}**: {a.get('method')} — {', '.join(f'`{i}`' for i in ids)}")  # (code: <token> shown)
        lines += [f"  - warning: {w.replace('<', '&lt;')}" for w in a.get("warnings", [])]  # (<new1>: no tag)
    lines += ["", "| model | stage | role | relative L2 (mean over layers) | 95% CI (mean over layers) | n |"]
    lines.append("|---|---|---|---|---|---|")
    shown = [s for s in stage_summary(rows, "relative_l2") if s["role"] in ("concept", "context", WHOLE_PROMPT)]
    for s in shown:  # as the HTML report's stage table (SDXL: per encoder, pooled)
        ci = f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]" if s["n"] >= MIN_CI else "—"
        lines.append(f"| {s['model']} | {s['stage']} | {s['role']} | {s['value']:.4f} | {ci} | {s['n']} |")
    note = ci_table_note(shown)
    lines += (["", note] if note else []) + ["", "Everything in one page: [report.html](report.html)", ""]
    lines += [f"![{f.stem}]({f.name})" for f in figures]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return figures


def alignment_files(paths: list[str]) -> Alignment | None:
    """``--alignment`` files (``world eval --json`` output) as the report's first section."""
    from ..viz.alignment import Alignment, AlignmentTable
    from ..world.shipped import read_rows

    tables = [AlignmentTable(f"from {p}", read_rows(p), f"`world eval --json` rows read from {p}") for p in paths]
    return Alignment(tables) if tables else None


def cmd_report(args: argparse.Namespace) -> int:
    from .. import compare, open_shards
    from ..viz.report import report_html, write_html

    single = str(args.out).lower().endswith((".html", ".htm"))
    out = html_path(args.out, args.overwrite) if single else out_dir(args.out, args.overwrite)
    images = {}
    for spec in args.image or []:
        title, sep, path = spec.partition("=")
        title, path = (title, path) if sep else (Path(spec).stem, spec)
        if not path:
            raise ProbeError(f"--image {spec!r} names no file", "pass --image [TITLE=]PATH of a PNG (e.g. a grid.png)")
        if Path(path).is_dir():
            raise ProbeError(f"image {path} is a folder", "pass --image [TITLE=]PATH of one PNG file (e.g. a grid.png)")
        if not Path(path).is_file():
            raise ProbeError(f"image {path} does not exist", "pass --image [TITLE=]PATH of a PNG (e.g. a grid.png)")
        images[title] = path
    alignment = alignment_files(args.alignment or [])
    tree = open_shards(args.store)  # (the cheap checks first)
    frame = compare(tree)
    rows = [{k: json_safe(v) for k, v in r.items()} for r in frame.astype(object).to_dict("records")]
    title = ", ".join(map(str, args.store))
    page = report_html(tree, rows, title=title, images=images, alignment=alignment)
    if single:
        write_html(page, out)
    else:
        with staged_folder(out) as tmp:
            write_folder(tree, rows, tmp, args.store)
            write_html(page, tmp / "report.html")
    print(f"report written to {Path(args.out)}")  # as given, for a file and a folder alike
    return 0


def add_parser(sub: Subparsers) -> None:
    p = subparser(sub, "report", "one self-contained report.html, or a folder with figures, rows.json and summary.md")
    p.add_argument("store", nargs="+", help="a store, or every shard of one")
    p.add_argument(
        "--out",
        required=True,
        help="FILE.html: one self-contained HTML page; otherwise a folder (rows.json, figures, summary.md, "
        "report.html)",
    )
    p.add_argument(
        "--image",
        action="append",
        metavar="[TITLE=]PATH",
        help="a PNG to embed in the report (repeatable), e.g. the grid.png of `alignit` or `swap`",
    )
    p.add_argument(
        "--alignment",
        action="append",
        metavar="FILE",
        help="a `world eval --json` file: its scores open the report (repeatable; one table each)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_report)
