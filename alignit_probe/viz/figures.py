"""What every report figure shares: a seaborn-styled matplotlib ``Figure`` drawn on the Agg canvas (no pyplot, so no
global figure state and no backend switch in a notebook), PNG bytes out, and one look per branch.

matplotlib and seaborn are imported when drawing, never at import time.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from ..analysis.stats import MIN_CI
from ..schema import ALIGNIT, BASELINE
from .fonts import fallback_fonts

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ROLE_COLORS = {"concept": "#d55e00", "context": "#0072b2", "special": "#7f7f7f", "padding": "#bbbbbb"}
METRIC_LABELS = {
    "relative_l2": "relative L2",
    "cosine_distance": "cosine distance",
    "one_minus_pearson": "1 − Pearson r",
    "jensen_shannon": "Jensen–Shannon divergence (bits)",
    "one_minus_iou": "1 − IoU",
}
ZERO_MARGIN = 0.05  # of the y range, below 0: points at exactly 0 are drawn whole, above the x axis


def metric_label(metric: str) -> str:
    """A metric's readable name with its unit (``jensen_shannon`` → "Jensen–Shannon divergence (bits)")."""
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def has_ci(point: dict | None) -> bool:
    """Whether a row (or stage summary) has a CI to draw: ``n`` ≥ ``MIN_CI`` prompts and finite bounds (below
    ``MIN_CI`` a bootstrap CI says nothing: figures draw the value alone, as the tables show it)."""
    if not point or (point.get("n") or 0) < MIN_CI:
        return False
    lo, hi = point.get("ci_low"), point.get("ci_high")
    return lo is not None and hi is not None and lo == lo and hi == hi


@contextlib.contextmanager
def drawing(font_scale: float = 0.8) -> Iterator[object]:
    """Seaborn's whitegrid style and notebook sizes for everything drawn inside, characters its fonts lack drawn in
    fallback fonts (``fonts``); yields the seaborn module."""
    import matplotlib
    import seaborn as sns

    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=font_scale)}
    with matplotlib.rc_context(rc), fallback_fonts():
        yield sns


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib ``Figure`` on the Agg canvas, constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})  # zlib's default 6: 5x the time
    return buf.getvalue()


def is_alignit(model: str) -> bool:
    return model == ALIGNIT or model.startswith(f"{ALIGNIT}-")


def customized_of(branch: str, customs: list[str]) -> str | None:
    """The customized model an AlignIT branch belongs to (``alignit`` → the only one, ``alignit-NAME`` → NAME)."""
    if branch == ALIGNIT:
        return customs[0] if len(customs) == 1 else None
    name = branch[len(ALIGNIT) + 1 :]
    return name if name in customs else None


def branch_styles(models: list[str]) -> dict[str, dict]:
    """Color, line style and marker of each branch but the baseline: one color per customized model (seaborn
    ``colorblind``), solid with round markers; its AlignIT branch in a lighter shade of the same color, dashed,
    with square markers."""
    import seaborn as sns

    shown = [m for m in models if m != BASELINE]
    customs = [m for m in shown if not is_alignit(m)]
    strays = [m for m in shown if is_alignit(m) and customized_of(m, customs) is None]
    palette = sns.color_palette("colorblind", max(1, len(customs) + len(strays)))
    color = dict(zip(customs + strays, palette))
    out = {}
    for m in shown:
        if is_alignit(m):
            base = color[customized_of(m, customs) or m]
            out[m] = dict(color=tuple(0.55 * c + 0.45 for c in base), linestyle="--", marker="s")
        else:
            out[m] = dict(color=color[m], linestyle="-", marker="o")
    return out


def dodge(n: int, width: float = 0.5) -> list[float]:
    """x offsets that put ``n`` series side by side within ``width`` around each x position."""
    if n <= 1:
        return [0.0] * n
    return [-width / 2 + width * i / (n - 1) for i in range(n)]


def errorbar_series(
    ax: Axes, xs: Sequence[float], points: list[dict | None], offset: float, label: str, style: dict
) -> None:
    """One series of value points, with asymmetric error bars (``ci_low``/``ci_high``) only where ``has_ci``;
    None points are gaps. Markers are not clipped at the axes, so points at exactly 0 show whole."""
    import numpy as np

    x = np.asarray(xs, dtype=float) + offset
    val = np.array([np.nan if p is None else p["value"] for p in points], dtype=float)
    ax.plot(x, val, markersize=5, linewidth=1.4, label=label, clip_on=False, zorder=3, **style)
    ci = np.array([has_ci(p) for p in points], dtype=bool)
    if ci.any():
        lo = np.array([p["ci_low"] for p, c in zip(points, ci) if c], dtype=float)
        hi = np.array([p["ci_high"] for p, c in zip(points, ci) if c], dtype=float)
        yerr = np.stack([val[ci] - lo, hi - val[ci]]).clip(min=0)
        ax.errorbar(x[ci], val[ci], yerr=yerr, fmt="none", capsize=3, linewidth=1.2, ecolor=style.get("color"))


def zero_floor(axes: Axes | Sequence[Axes]) -> None:
    """y from a small margin below 0 (distances are ≥ 0) up to the highest top of ``axes`` (call it once the data
    are drawn; panels sharing y given together): points at exactly 0 stand clear of the x axis; a thin line
    marks 0."""
    axes = list(axes.ravel()) if hasattr(axes, "ravel") else list(axes) if isinstance(axes, Sequence) else [axes]
    top = max(max(ax.get_ylim()[1] for ax in axes), 1e-12)
    for ax in axes:
        ax.set_ylim(-ZERO_MARGIN * top, top)
        ax.axhline(0, color="0.6", linewidth=0.8, zorder=1)


def legend_outside(fig: Figure, axes: Sequence[Axes], ncol: int | None = None) -> None:
    """The figure's one legend (the panels' labelled artists, each label once) above the panels, outside every data
    area."""
    found: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            found.setdefault(label, handle)
    if found:
        n = ncol or min(len(found), 6)
        fig.legend(list(found.values()), list(found), fontsize=8, loc="outside upper center", ncol=n)
