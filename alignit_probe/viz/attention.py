"""Cross-attention figures for the report: word grids (one row per branch — baseline, customized, AlignIT — one
column per word, columns paired by role through ``ref_index``; ``analysis.words``) and the maps' divergence from the
baseline by role (``compare`` rows of stage ``attention_map``). PNG bytes; matplotlib imported when drawing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..schema import ATTENTION_METRICS, ATTENTION_STAGE, BASELINE
from .figures import (
    ROLE_COLORS,
    branch_styles,
    dodge,
    drawing,
    errorbar_series,
    legend_outside,
    metric_label,
    new_figure,
    png_bytes,
    zero_floor,
)

if TYPE_CHECKING:
    from ..analysis.words import WordGrid

ROLES = ("concept", "context")


def attention_grid_figure(grid: WordGrid) -> bytes | None:
    """One ``analysis.words.WordGrid``: maps normalised to max 1, one color scale per row (from the row's lowest
    value to 1, with its colorbar); under each non-baseline map its 1 − Pearson r to the baseline map above it;
    "none": no such word in that branch."""
    branches = list(grid.maps)
    if not branches or not grid.words:
        return None
    n = len(grid.words)
    with drawing(0.75):
        # a fixed grid, not constrained layout: laying out dozens of small axes costs a second a figure
        width, height = 2.2 + 1.45 * n, 0.55 + 1.55 * len(branches)
        fig = new_figure(width, height)
        fig.set_layout_engine("none")
        margins = dict(left=1.05 / width, right=1 - 1.0 / width, top=1 - 0.35 / height, bottom=0.2 / height)
        axes = fig.subplots(len(branches), n, squeeze=False, gridspec_kw=dict(margins, wspace=0.12, hspace=0.3))
        for i, branch in enumerate(branches):
            image, row = None, grid.maps[branch]
            low = float(np.nanmin(row)) if np.isfinite(row).any() else 0.0
            for j in range(n):
                ax = axes[i, j]
                m = grid.maps[branch][j]
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                if np.isfinite(m).any():
                    image = ax.imshow(m, vmin=min(low, 0.99), vmax=1, cmap="viridis", interpolation="nearest")
                    d = grid.one_minus_pearson.get(branch, np.full(n, np.nan))[j]
                    if branch != BASELINE and np.isfinite(d):
                        ax.set_xlabel(f"1−r {d:.2f}", fontsize=7)
                else:
                    ax.set_facecolor("#f2f2f2")
                    ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=7, color="0.5", transform=ax.transAxes)
                if i == 0:
                    ax.set_title(grid.words[j], fontsize=8, color=ROLE_COLORS.get(grid.roles[j], "black"))
                if j == 0:
                    ax.set_ylabel(branch, fontsize=8)
            if image is not None:
                box = axes[i, -1].get_position()
                cax = fig.add_axes((box.x1 + 0.12 / width, box.y0, 0.1 / width, box.height))
                fig.colorbar(image, cax=cax, label="map / max")
        return png_bytes(fig)


def attention_divergence_figure(rows: list[dict]) -> bytes | None:
    """Each branch's attention-map divergence from the baseline per role (95% bootstrap CI over prompts where n ≥
    ``MIN_CI``), one panel per metric titled with its readable name and unit (1 − Pearson r, Jensen–Shannon
    divergence in bits, 1 − IoU)."""
    rows = [r for r in rows if r["stage"] == ATTENTION_STAGE and r["n"] and r["value"] is not None]
    rows = [r for r in rows if r["role"] in ROLES]
    if not rows:
        return None
    models = list(dict.fromkeys(r["model"] for r in rows))
    metrics = [m for m in ATTENTION_METRICS if any(r["metric"] == m for r in rows)]
    cell = {(r["model"], r["metric"], r["role"]): r for r in rows}
    with drawing():
        styles = branch_styles(models)
        fig = new_figure(3.2 * len(metrics), 3.2)
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        for ax, metric in zip(axes, metrics):
            for off, model in zip(dodge(len(models), 0.3), models):
                pts = [cell.get((model, metric, role)) for role in ROLES]
                if any(pts):
                    errorbar_series(ax, range(len(ROLES)), pts, off, model, {**styles[model], "linestyle": "none"})
            ax.set_xticks(range(len(ROLES)), ROLES)
            ax.set_xlim(-0.6, len(ROLES) - 0.4)
            zero_floor(ax)
            ax.set_title(metric_label(metric), fontsize=9)
        axes[0].set_ylabel("divergence from baseline")
        legend_outside(fig, axes, ncol=min(len(models), 4))
        return png_bytes(fig)
