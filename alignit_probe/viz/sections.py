"""The report's sections, each from the store and its ``compare`` rows: the values the template
(``templates/report.html.j2``) shows, figures as base64 PNG data URIs; None or empty where the store lacks the data.
See ``viz.report`` for the list."""

from __future__ import annotations

import base64
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xarray as xr

from .. import store as st
from ..analysis.stats import fmt
from ..errors import ProbeError
from ..schema import ATTENTION_METRICS, BASELINE, alignit_branch, short_layer, unet_order_key
from ..text.byte_level import token_text
from .figures import is_alignit, metric_label
from .notes import cell_text, ci_caption, ci_table_note

METRIC = "relative_l2"
DISTANCES = ("relative_l2", "cosine_distance")  # the checkpoint figures' metrics
HEATMAP_PROMPTS = 3
ATTENTION_PROMPTS = 2
PROJECTION_PROMPTS = 64
ROLES = ("concept", "context")


def data_uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def file_figure_uri(draw: Callable[..., str | Path], *args: Any) -> str:
    """Data URI of a figure function that writes a PNG to a path (``viz.drift``), via a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        return data_uri(Path(draw(*args[:1], Path(tmp) / "figure.png", *args[1:])).read_bytes())


def safe_rows(rows: list[dict]) -> list[dict]:
    """Rows with NaN as None (as ``compare --json`` writes them)."""
    return [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()} for r in rows]


def custom_models(tree: xr.DataTree) -> list[str]:
    given = st.store_attrs(tree).get("custom_models")
    return list(given) if given else [m for m in st.models(tree) if m != BASELINE and not is_alignit(m)]


def models_section(tree: xr.DataTree) -> list[dict]:
    """Section 1: one entry per branch with its verdict, method, source, artifacts and warnings."""
    out = []
    for model in st.models(tree):
        a = st.model_attrs(tree, model)
        artifacts = []
        for art in a.get("artifacts") or []:
            warns = list(art.get("warnings") or [])
            artifacts.append(
                dict(
                    kind=art.get("kind", "?"),
                    path=art.get("path", ""),
                    sha256=art.get("sha256", ""),
                    sha_short=(art.get("sha256") or "")[:12] or "—",
                    tokens=list(art.get("tokens") or []),
                    warnings=warns,
                    verdict="check" if warns else "loaded",
                    verdict_class="warn" if warns else "ok",
                )
            )
        warnings = list(a.get("warnings") or [])
        if model == BASELINE:
            verdict, cls = "reference", "ref"
        elif is_alignit(model):
            verdict, cls = f"AlignIT of {a.get('custom_model', '?')}", "fix"
        elif warnings or any(x["warnings"] for x in artifacts):
            verdict, cls = "check warnings", "warn"
        else:
            verdict, cls = "loaded", "ok"
        source = a.get("model_id") or ""
        if a.get("custom_ids"):
            source = f"{source} + " + " + ".join(map(str, a["custom_ids"])) if source else ", ".join(a["custom_ids"])
        out.append(
            dict(
                name=model,
                method=a.get("method"),
                source=source,
                artifacts=artifacts,
                warnings=warnings,
                verdict=verdict,
                verdict_class=cls,
            )
        )
    return out


def stages_section(rows: list[dict]) -> dict | None:
    """Section 2: the stage figure, its table (both metrics) and the every-layer figure."""
    from .drift import drift_figure
    from .stages import LAYERED, WHOLE_PROMPT, stage_figure, stage_summary, usable

    figure = data_uri(stage_figure(rows, METRIC))
    if figure is None:
        return None
    summary = stage_summary(rows, METRIC)
    roles = ROLES + ((WHOLE_PROMPT,) if any(s["role"] == WHOLE_PROMPT for s in summary) else ())
    cell = {(s["model"], s["stage"], s["role"]): s for s in summary}
    table = []
    for model, stage in dict.fromkeys((s["model"], s["stage"]) for s in summary):
        sel = [cell.get((model, stage, r)) for r in roles]
        got = [s for s in sel if s]
        table.append(
            dict(
                model=model,
                stage=stage,
                cells=[cell_text(s) for s in sel],
                layers=max(s["layers"] for s in got),
                n=max(s["n"] for s in got),
            )
        )
    averaged = list(dict.fromkeys(s["stage"] for s in summary if s["base"] in LAYERED and s["layers"] > 1))
    note = (
        f"{', '.join(averaged)}: the mean over their layers (value and CI bounds: the means of the layers'; every "
        "layer is shown under “Every layer”, and K/V per layer in the next section)."
        if averaged
        else ""
    )
    if any(s["stage"].endswith("(text_2)") for s in summary):
        note += (
            " SDXL: (text) is the first text encoder (CLIP ViT-L), (text_2) the second (OpenCLIP ViT-bigG); "
            "encoder_output is their two penultimate states side by side."
        )
    if len(roles) > len(ROLES):
        note += (
            f" {WHOLE_PROMPT}: SDXL's pooled text embedding (one vector per prompt, it conditions the UNet's time "
            "embedding), not in the figure."
        )
    if not any(s["role"] == "concept" for s in summary):
        note += " No concept rows: the concept's tokens have no baseline partner (record with --class-word)."
    shown = [s for s in summary if s["role"] in ROLES]
    return dict(
        figure=figure,
        table=table,
        roles=roles,
        metric_label=metric_label(METRIC),
        note=note,
        ci=ci_caption(shown),
        ci_bands=ci_caption([r for r in usable(rows, METRIC)], "bands"),
        ci_note=ci_table_note(summary),
        alignit=any(is_alignit(s["model"]) for s in summary),
        every_layer=file_figure_uri(drift_figure, rows, METRIC),
    )


def kv_section(rows: list[dict]) -> dict | None:
    """Section 3: K/V per attn2 layer and the short-label legend."""
    from ..schema import KV_STAGES
    from .stages import kv_layer_figure, usable

    figure = data_uri(kv_layer_figure(rows, METRIC))
    if figure is None:
        return None
    paths = sorted({r["layer"] for r in rows if r["stage"] in ("key", "value") and r["layer"]}, key=unet_order_key)
    drawn = [r for r in usable(rows, METRIC, KV_STAGES) if r["role"] in ROLES]
    return dict(
        figure=figure,
        metric_label=metric_label(METRIC),
        legend=[(short_layer(p), p) for p in paths],
        ci=ci_caption(drawn),
    )


def heatmap_section(tree: xr.DataTree) -> list[dict]:
    """Section 4: one tokens × stages figure per prompt (first prompts), every non-baseline branch side by side."""
    from ..analysis.tokens import token_stage_distances
    from .tokens import token_heatmap_figure

    branches = [m for m in st.models(tree) if m != BASELINE]
    if BASELINE not in st.models(tree) or not branches:
        return []
    tables = {m: token_stage_distances(tree, m, HEATMAP_PROMPTS, METRIC) for m in branches}
    first = next(iter(tables.values()))
    out = []
    for p in range(first.sizes["prompt"]):
        figure = data_uri(token_heatmap_figure(tables, p, METRIC))
        if figure is not None:
            out.append(dict(index=int(first.prompt.values[p]), prompt=str(first.prompt_text.values[p]), figure=figure))
    return out


def embedding_section(tree: xr.DataTree) -> dict | None:
    """Section 5: the learned-vector table of each ``<model>/embedding`` node and the token-embedding PCA."""
    from ..analysis.tokens import embedding_vectors, project_vectors
    from .tokens import projection_figure

    tables, learned = [], set()
    nodes = [(m, node) for m in st.models(tree) for node in ("embedding", "embedding_2") if node in tree[m].children]
    xl = any(node == "embedding_2" for _, node in nodes)
    for model, node in nodes:
        emb = tree[f"{model}/{node}"].to_dataset(inherit=False).load()
        if not emb.sizes.get("vector"):
            continue
        rows = []
        for v in emb.vector.values:
            e = emb.sel(vector=v)
            token = str(e.vector_token.item())
            learned.add(token)
            near = ", ".join(
                f"{token_text(t)} ({c:.2f})" for t, c in zip(e.neighbor_token.values, e.neighbor_cosine.values)
            )
            rows.append(
                dict(
                    token=token,
                    norm=fmt(float(e.norm), 3),
                    percentile=fmt(float(e.norm_percentile), 1),
                    z=f"{float(e.norm_z):+.2f}",
                    neighbors=near,
                )
            )
        encoder = " (second text encoder, text_2)" if node == "embedding_2" else " (first text encoder)" if xl else ""
        tables.append(
            dict(
                model=model + encoder,
                rows=rows,
                vocab_mean=fmt(emb.attrs.get("vocab_norm_mean"), 4),
                vocab_std=fmt(emb.attrs.get("vocab_norm_std"), 4),
            )
        )
    projection, caption = None, ""
    vectors = embedding_vectors(tree, [BASELINE] + custom_models(tree), PROJECTION_PROMPTS)
    if len(vectors) >= 3:
        points, ratios = project_vectors(vectors)
        projection = data_uri(projection_figure(points, ratios, learned))
        caption = (
            f"PCA (scikit-learn) of the token-embedding vectors (input embedding rows, before position embeddings) "
            f"of every distinct concept and context token in the first {PROJECTION_PROMPTS} prompts: the baseline's "
            "as open circles, each customized model's as filled markers, learned vectors as stars. The store holds "
            "no vocabulary, so the prompts' own words stand in for it; the class word is the baseline's concept "
            "token. A filled marker inside a circle: that token's embedding is unchanged."
        )
    if not tables and projection is None:
        return None
    return dict(tables=tables, projection=projection, caption=caption)


def attention_section(tree: xr.DataTree, rows: list[dict]) -> dict | None:
    """Section 6: word grids (baseline / customized / AlignIT) of the first prompts and the divergence rows."""
    from ..analysis.words import attention_words
    from .attention import attention_divergence_figure, attention_grid_figure

    with_maps = [m for m in st.models(tree) if "attention" in tree[m].children]
    if not with_maps:
        return None
    customs = custom_models(tree)
    grids = []
    for model in [m for m in customs if m in with_maps]:
        branches = [b for b in (BASELINE, model, alignit_branch(model, len(customs))) if b in with_maps]
        n = tree[f"{model}/attention"].to_dataset()["map"].sizes["prompt"]
        for p in range(min(n, ATTENTION_PROMPTS)):
            grid = attention_words(tree, model, branches, p)
            figure = data_uri(attention_grid_figure(grid))
            if figure is not None:
                index = int(st.token_labels(tree, model).prompt.values[p])
                grids.append(dict(model=model, index=index, prompt=grid.prompt_text, figure=figure))
    att = [r for r in rows if r["stage"] == "attention_map" and r["role"] in ROLES]
    cell = {(r["model"], r["metric"], r["role"]): r for r in att if r["n"]}
    table = []
    for model, metric in dict.fromkeys((r["model"], r["metric"]) for r in att):
        if metric in ATTENTION_METRICS and any(cell.get((model, metric, role)) for role in ROLES):
            sel = [cell.get((model, metric, role)) for role in ROLES]
            table.append(
                dict(
                    model=model,
                    metric=metric_label(metric),
                    cells=[cell_text(s) for s in sel],
                    n=max(s["n"] for s in sel if s),
                )
            )
    divergence = data_uri(attention_divergence_figure(rows))
    if not grids and divergence is None:
        return None
    drawn = [r for r in att if r["n"] and r["value"] is not None]
    return dict(
        grids=grids,
        divergence=divergence,
        table=table,
        roles=ROLES,
        ci=ci_caption(drawn),
        ci_note=ci_table_note(list(cell.values())),
    )


def checkpoint_run(tree: xr.DataTree) -> dict[str, int] | None:
    """{model: training step} when the store's customized models are checkpoints of one run (one method, and
    ``viz.drift.run_steps`` finds a step in each name, or else in each SPEC path, the rest being the same); else
    None."""
    from .drift import run_steps

    models = set(st.models(tree))
    attrs = {m: st.model_attrs(tree, m) for m in custom_models(tree) if m in models}
    if len({str(a.get("method")) for a in attrs.values()}) != 1:
        return None
    return run_steps({m: [m, *map(str, a.get("custom_ids") or [])] for m, a in attrs.items()})


def checkpoint_section(tree: xr.DataTree, rows: list[dict]) -> dict | None:
    """Section 7, when the store holds more than one customized model: ``viz.drift.checkpoint_figure`` per metric,
    as checkpoints of one run (``checkpoint_run``: ordered by step, lines) or as models side by side (points)."""
    from .drift import checkpoint_figure

    drawn = [r for r in rows if r["n"] and r["stage"] != "attention_map" and r["role"] in ROLES]
    if len(custom_models(tree)) < 2 or not drawn:
        return None
    steps = checkpoint_run(tree)
    figures = [
        dict(metric=m, label=metric_label(m), figure=file_figure_uri(checkpoint_figure, rows, m, ROLES, steps))
        for m in DISTANCES
    ]
    section = dict(figures=figures, ci=ci_caption(drawn))
    if steps:
        how = ", ".join(f"{m} {n}" for m, n in steps.items())
        return section | dict(
            anchor="checkpoints",
            nav="checkpoints",
            title="Checkpoints of one run",
            how=f"checkpoints of one training run (their step numbers: {how}), ordered by step and joined with lines",
        )
    return section | dict(
        anchor="side-by-side",
        nav="models side by side",
        title="Customized models side by side",
        how="points in the order recorded, not joined by lines: as far as the store says (one method, and names or "
        "paths that differ only in a step number such as checkpoint-500) they are not checkpoints of one run, so "
        "no progression is drawn",
    )


def flat(value: object, prefix: str = "") -> list[str]:
    """Nested dicts as ``a.b = value`` lines (lists and scalars as JSON)."""
    if isinstance(value, dict):
        return [line for k, v in value.items() for line in flat(v, f"{prefix}{k}.")]
    return [f"{prefix.rstrip('.')} = {json.dumps(value)}" if prefix else json.dumps(value)]


def config_section(tree: xr.DataTree) -> list[tuple[str, str, bool]]:
    """Section 8: (name, text, preformatted) of the root attributes that describe the run."""
    attrs = st.store_attrs(tree)
    out = []
    for key in ("command", "n_prompts", "concepts", "custom_models", "options", "versions", "fingerprint"):
        value = attrs.get(key)
        if value is None:
            continue
        if key == "command":
            commands = value if value and isinstance(value[0], list) else [value]
            out.append((key, "\n".join(" ".join(map(str, c)) for c in commands if c), True))
        elif key == "concepts":
            text = ", ".join(f"{c.get('token')} (class word: {c.get('class_word') or 'none'})" for c in value)
            out.append((key, text, False))
        elif key == "custom_models":
            out.append((key, ", ".join(map(str, value)), False))
        elif isinstance(value, dict):
            out.append((key, "\n".join(flat(value)), True))
        else:
            out.append((key, str(value), False))
    for key in ("n_tokens", "n_tokens_full", "shards", "merged_from", "summary"):
        if key in attrs:
            out.append((key, str(attrs[key]), False))
    return out


def store_warnings(tree: xr.DataTree) -> list[str]:
    """The root's warnings, then each branch's, labelled, each once."""
    out = list(st.store_attrs(tree).get("warnings") or [])
    for model in st.models(tree):
        out += [f"({model}) {w}" for w in st.model_attrs(tree, model).get("warnings") or []]
    return list(dict.fromkeys(out))


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
        out.append(dict(title=title, uri=data_uri(path.read_bytes()), caption=caption, name=path.name))
    return out
