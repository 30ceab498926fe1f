"""Per-token figures: a tokens × stages heatmap of one prompt (each token's distance to its baseline partner, one
panel per branch, one color scale), and the token embeddings of the prompts' words on their first two principal
components. Both return PNG bytes; matplotlib/seaborn are imported when drawing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..schema import BASELINE
from ..text.byte_level import readable, token_texts
from .figures import ROLE_COLORS, drawing, is_alignit, metric_label, new_figure, png_bytes

if TYPE_CHECKING:
    import pandas as pd

STAGE_TICKS = {  # layered stages: the mean over their layers (said in the report's caption)
    "token_embedding": "token\nemb.",
    "encoder_layer": "enc.\nlayers",
    "encoder_output": "enc.\noutput",
    "key": "K",
    "value": "V",
}
MARKERS = ("X", "D", "^", "v", "P", "<", ">")


def token_text(token: str) -> str:
    """A token label as the text it stands for (byte-level spelling decoded, no ``</w>``)."""
    return readable(token)


def cell_heatmap(ax: object, values: np.ndarray, vmax: float, cmap: object, annotate: bool) -> None:
    """``values`` (rows, columns) as white-ruled cells from 0 to ``vmax``, row 0 at the top, NaN cells left empty
    (the axes' face shows), each finite cell annotated to 2 decimals when ``annotate``. (seaborn's heatmap draws
    the whole figure once per call to check its tick labels: seconds for a figure of several panels.)"""
    masked = np.ma.masked_invalid(values)
    ax.pcolormesh(masked, cmap=cmap, vmin=0, vmax=vmax, edgecolors="white", linewidth=0.3)
    ax.set_xlim(0, values.shape[1])
    ax.set_ylim(values.shape[0], 0)
    for side in ax.spines.values():
        side.set_visible(False)
    if not annotate:
        return
    norm = cmap(np.clip(np.nan_to_num(values) / vmax, 0, 1))
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            dark = 0.299 * norm[i, j, 0] + 0.587 * norm[i, j, 1] + 0.114 * norm[i, j, 2] < 0.5
            text = ax.text(j + 0.5, i + 0.5, f"{v:.2f}", ha="center", va="center", fontsize=6)
            text.set_color("white" if dark else "black")
            text.set_in_layout(False)


def token_heatmap_figure(tables: dict, prompt: int, metric: str = "relative_l2") -> bytes | None:
    """Prompt position ``prompt`` of each (prompt, token, stage) table (``analysis.tokens.token_stage_distances``,
    one per branch): rows = the branch's tokens without padding, columns = stages; grey cells have no value (no
    baseline partner, or a stage the branch does not hold). None when nothing has a value."""
    panels = {}
    for model, table in tables.items():
        da = table.isel(prompt=prompt)
        keep = np.asarray(da.role.values != "padding")
        panels[model] = da.isel(token=np.flatnonzero(keep))
    finite = [p.values[np.isfinite(p.values)] for p in panels.values()]
    if not any(f.size for f in finite):
        return None
    vmax = max(float(f.max()) for f in finite if f.size) or 1.0
    n_tok = max(p.sizes["token"] for p in panels.values())
    with drawing(0.75) as sns:
        fig = new_figure(0.5 + 3.4 * len(panels), 1.3 + 0.24 * n_tok)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for k, (ax, (model, da)) in enumerate(zip(axes, panels.items())):
            last = k == len(panels) - 1
            values = da.transpose("token", "stage").values
            cell_heatmap(ax, values, vmax, sns.color_palette("rocket_r", as_cmap=True), annotate=len(values) <= 24)
            if last:
                fig.colorbar(ax.collections[0], ax=ax, label=metric_label(metric) + " to baseline", shrink=0.9)
            ax.set_facecolor("#e6e6e6")
            ax.grid(False)
            ax.set_xticks(np.arange(da.sizes["stage"]) + 0.5, [STAGE_TICKS.get(s, s) for s in da.stage.values])
            ax.tick_params(axis="x", labelsize=6, rotation=0)
            ax.set_yticks(np.arange(da.sizes["token"]) + 0.5, token_texts(list(da.token_str.values)))
            ax.tick_params(axis="y", labelsize=7, rotation=0)
            for tick, role in zip(ax.get_yticklabels(), da.role.values):
                tick.set_color(ROLE_COLORS.get(str(role), "black"))
                tick.set_fontweight("bold" if role == "concept" else "normal")
            ax.set_title(model + (" (K/V only)" if is_alignit(model) else ""), fontsize=9)
        return png_bytes(fig)


def projection_figure(
    points: pd.DataFrame | None, ratios: list[float], learned: set[str] = frozenset()
) -> bytes | None:
    """Token embeddings on PC1/PC2 (``analysis.tokens.project_vectors``): the baseline's tokens as open circles,
    each customized model's as filled markers, colored by role; tokens in ``learned`` (the learned vectors) as
    stars. A customized marker inside a baseline circle is a token whose embedding did not change."""
    if points is None or not len(points):
        return None
    models = list(dict.fromkeys(points["model"]))
    customs = [m for m in models if m != BASELINE]
    roles = set(points["role"])
    with drawing() as sns:
        fig = new_figure(8.8, 5.5)
        ax = fig.subplots()
        for model in models:
            sel = points[points["model"] == model]
            for role, grp in sel.groupby("role"):
                color = ROLE_COLORS.get(role, "black")
                is_new = grp["token_str"].isin(learned).to_numpy()
                if model == BASELINE:
                    ax.scatter(grp.pc1, grp.pc2, s=110, facecolors="none", edgecolors=color, linewidths=1.4)
                    continue
                marker = MARKERS[customs.index(model) % len(MARKERS)]
                ax.scatter(grp.pc1[~is_new], grp.pc2[~is_new], s=40, marker=marker, color=color, alpha=0.85)
                ax.scatter(grp.pc1[is_new], grp.pc2[is_new], s=260, marker="*", color=color, edgecolors="black")
        labelled, crowded = set(), points["token_str"].nunique() > 40
        for row in points.itertuples():
            key = (row.token_str, round(row.pc1, 3), round(row.pc2, 3))
            if key in labelled or (crowded and row.role != "concept"):
                continue
            labelled.add(key)
            weight = "bold" if row.token_str in learned or row.role == "concept" else "normal"
            ax.annotate(
                token_text(row.token_str),
                (row.pc1, row.pc2),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=7,
                fontweight=weight,
            )
        handles = [
            ax.scatter([], [], s=80, facecolors="none", edgecolors="0.3", label=f"{BASELINE} (open circles)"),
            *[
                ax.scatter([], [], s=40, marker=MARKERS[i % len(MARKERS)], color="0.3", label=m)
                for i, m in enumerate(customs)
            ],
            *[ax.scatter([], [], s=40, color=c, label=f"{r} token") for r, c in ROLE_COLORS.items() if r in roles],
        ]
        if learned:
            star = dict(s=160, marker="*", color="0.3", edgecolors="black", label="learned vector")
            handles.append(ax.scatter([], [], **star))
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the points
        ax.set_xlabel(f"PC1 ({100 * ratios[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * ratios[1]:.0f}% of variance)")
        sns.despine(ax=ax)
        return png_bytes(fig)
