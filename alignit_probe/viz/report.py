"""The diagnostic report as ONE self-contained HTML file: figures embedded as base64 PNG data URIs, inline CSS and
a tiny inline self-check script (its result goes into a hidden element, for tests and headless checks: no reader
sees it), nothing fetched from anywhere. Rendered with Jinja2 from ``templates/report.html.j2``; every section
appears only when the store holds its data:

1. alignment, when the caller gives it: the world's exact context accuracy and concept fidelity per branch, live and
   shipped (or a ``world eval --json`` file), and the scored images (``viz.alignment``);
2. stage-by-stage divergence, concept vs context, every branch on the same axes (``viz.stages``): what explains 1;
3. K and V per attn2 layer in UNet order (``viz.stages``);
4. tokens × stages heatmaps of the first prompts (``analysis.tokens``, ``viz.tokens``);
5. learned-embedding diagnostics and a PCA of the prompts' token embeddings (``analysis.tokens``, ``viz.tokens``);
6. attention-map grids and their divergence rows (``analysis.words``, ``viz.attention``);
7. several customized models: checkpoints of one run, or models side by side (``viz.drift.checkpoint_figure``);
8. image grids given by the caller (the AlignIT grid, K/V swaps);
9. models and artifacts with their "did it load?" verdicts and warnings;
10. the run's configuration (root attributes).

``report_html(tree, rows)`` returns the page; ``write_html(text, path)`` writes it atomically (temp file, rename).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import xarray as xr

from .. import store as st
from . import notes
from . import sections as sec
from .alignment import Alignment, alignment_section
from .figures import metric_label

TEMPLATES = Path(__file__).with_name("templates")


def report_context(
    tree: xr.DataTree,
    rows: list[dict],
    title: str = "",
    images: dict | None = None,
    alignment: Alignment | None = None,
) -> dict:
    """Everything the template shows (sections without data are None / empty)."""
    rows = sec.safe_rows(rows)
    labels = st.token_labels(tree, st.models(tree)[0])
    ctx = dict(
        title=title or "store",
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        recorded=notes.recorded_time(tree),
        summary_note=notes.summary_note(tree),
        n_prompts=int(st.store_attrs(tree).get("n_prompts") or labels.sizes["prompt"]),
        warnings=sec.store_warnings(tree),
        alignment=alignment_section(alignment),
        models=sec.models_section(tree),
        stages=sec.stages_section(rows),
        kv=sec.kv_section(rows),
        heatmaps=sec.heatmap_section(tree),
        heatmap_metric=metric_label(sec.METRIC),
        embedding=sec.embedding_section(tree),
        attention=sec.attention_section(tree, rows),
        checkpoints=sec.checkpoint_section(tree, rows),
        images=sec.images_section(images),
        config=sec.config_section(tree),
    )
    names = dict(
        alignment="alignment",
        stages="stages",
        kv="K/V per layer",
        heatmaps="tokens",
        embedding="embeddings",
        attention="attention",
        checkpoints="checkpoints",
        images="images",
        models="models",
        config="configuration",
    )
    anchors = dict(heatmaps="tokens")
    if ctx["checkpoints"]:  # checkpoints of one run, or models side by side: the nav says which
        names["checkpoints"], anchors["checkpoints"] = ctx["checkpoints"]["nav"], ctx["checkpoints"]["anchor"]
    shown = [k for k in names if ctx[k]]
    ctx["nav"] = [(anchors.get(k, k), names[k]) for k in shown]
    ctx["number"] = {k: i + 1 for i, k in enumerate(shown)}  # sections numbered as shown
    return ctx


def render(context: dict) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"], default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(**context)


def report_html(
    tree: xr.DataTree,
    rows: list[dict] | None = None,
    title: str = "",
    images: dict | None = None,
    alignment: Alignment | None = None,
) -> str:
    """The whole report page of a store (``rows``: its ``compare`` rows, computed when not given; ``images``:
    {title: PNG path} of image grids to embed, e.g. the AlignIT grid; ``alignment``: the world's scores, shown
    first)."""
    if rows is None:
        from ..analysis.metrics import compare_rows

        rows = compare_rows(tree)
    return render(report_context(tree, rows, title, images, alignment))


def write_html(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, renamed into place: a failed write
    leaves no half-written report (and an existing one untouched)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
