"""The diagnostic report as ONE self-contained HTML file: figures embedded as base64 PNG data URIs, inline CSS and
a tiny inline self-check script (its result goes into a hidden element, for tests and headless checks: no reader
sees it), nothing fetched from anywhere. Rendered with Jinja2 from ``templates/report.html.j2``; every section
appears only when the store holds its data:

1. models and artifacts with their "did it load?" verdicts and warnings;
2. stage-by-stage divergence, concept vs context, every branch on the same axes (``viz.stages``);
3. K and V per attn2 layer in UNet order (``viz.stages``);
4. tokens × stages heatmaps of the first prompts (``analysis.tokens``, ``viz.tokens``);
5. learned-embedding diagnostics and a PCA of the prompts' token embeddings (``analysis.tokens``, ``viz.tokens``);
6. attention-map grids and their divergence rows (``analysis.words``, ``viz.attention``);
7. several customized models: checkpoints of one run, or models side by side (``viz.drift.checkpoint_figure``);
8. image grids given by the caller (the AlignIT grid, K/V swaps);
9. the run's configuration (root attributes).

``report_html(tree, rows)`` returns the page; ``write_html(text, path)`` writes it atomically (temp file, rename).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import xarray as xr

from .. import store as st
from ..errors import ProbeError
from . import notes
from . import sections as sec
from .figures import metric_label

TEMPLATES = Path(__file__).with_name("templates")


def images_section(images: dict[str, str | os.PathLike] | None) -> list[dict]:
    """PNG files (AlignIT grid, K/V swap grid …) embedded whole: [{title, uri, caption}]; the grids' PNG text chunks
    (prompts, caption) become the caption."""
    from PIL import Image

    out = []
    for title, path in (images or {}).items():
        path = Path(path)
        try:
            with Image.open(path) as im:
                caption, kind = im.info.get("caption") or "", im.format
        except (OSError, ValueError) as e:
            raise ProbeError(f"image {path} cannot be read ({e})", "pass a PNG file (e.g. a grid.png)") from None
        if kind != "PNG":
            raise ProbeError(f"image {path} is a {kind} file", "pass a PNG file (e.g. a grid.png), or convert it")
        out.append(dict(title=title, uri=sec.data_uri(path.read_bytes()), caption=caption, name=path.name))
    return out


def report_context(tree: xr.DataTree, rows: list[dict], title: str = "", images: dict | None = None) -> dict:
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
        models=sec.models_section(tree),
        stages=sec.stages_section(rows),
        kv=sec.kv_section(rows),
        heatmaps=sec.heatmap_section(tree),
        heatmap_metric=metric_label(sec.METRIC),
        embedding=sec.embedding_section(tree),
        attention=sec.attention_section(tree, rows),
        checkpoints=sec.checkpoint_section(tree, rows),
        images=images_section(images),
        config=sec.config_section(tree),
    )
    names = dict(
        models="models",
        stages="stages",
        kv="K/V per layer",
        heatmaps="tokens",
        embedding="embeddings",
        attention="attention",
        checkpoints="checkpoints",
        images="images",
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


def report_html(tree: xr.DataTree, rows: list[dict] | None = None, title: str = "", images: dict | None = None) -> str:
    """The whole report page of a store (``rows``: its ``compare`` rows, computed when not given; ``images``:
    {title: PNG path} of image grids to embed, e.g. the AlignIT grid)."""
    if rows is None:
        from ..analysis.metrics import compare_rows

        rows = compare_rows(tree)
    return render(report_context(tree, rows, title, images))


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
