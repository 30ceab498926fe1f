"""What every report figure shares: a seaborn-styled matplotlib ``Figure`` drawn on the Agg canvas (no pyplot, so no
global figure state and no backend switch in a notebook), PNG bytes out, and one look per branch.

matplotlib and seaborn are imported when drawing, never at import time.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from ..schema import ALIGNIT, BASELINE
from .fonts import fallback_fonts

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ROLE_COLORS = {"concept": "#d55e00", "context": "#0072b2", "special": "#7f7f7f", "padding": "#bbbbbb"}


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
    fig.savefig(buf, format="png", dpi=dpi)
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
    """One series of value points with asymmetric error bars (``ci_low``/``ci_high``); None points are gaps."""
    import numpy as np

    x = np.asarray(xs, dtype=float) + offset
    val = np.array([np.nan if p is None else p["value"] for p in points], dtype=float)
    lo = np.array([np.nan if p is None else p["ci_low"] for p in points], dtype=float)
    hi = np.array([np.nan if p is None else p["ci_high"] for p in points], dtype=float)
    yerr = np.nan_to_num(np.stack([val - lo, hi - val]).clip(min=0))
    ax.errorbar(x, val, yerr=yerr, capsize=3, markersize=5, linewidth=1.4, label=label, **style)
