"""Diagnostic figures from ``compare`` rows (matplotlib and seaborn are imported when drawing, never at import).

``drift_figure``: each model's distance to the baseline along the text path, one line per role.
``checkpoint_figure``: drift against model (checkpoints of one run ordered by their step number, or any set of
customized models in the order given), one panel per stage, concept vs context.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..schema import ALIGNIT, BASELINE, STAGES, is_text_layer, layer_order, short_layer

ROLE_ORDER = ("concept", "context", "special", "padding")


class _Canvas:
    """``plt.subplots``/``plt.close`` without pyplot: figures on their own Agg canvas, so drawing here never switches
    the backend of a notebook or an application that imported us."""

    @staticmethod
    def subplots(nrows, ncols, figsize, squeeze=False, **kw):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kw)

    @staticmethod
    def close(fig) -> None:
        fig.clear()


def _pyplot():
    import seaborn as sns

    return _Canvas, sns


def stage_steps(rows: list[dict]) -> list[tuple[str, object]]:
    """(stage, layer) pairs in data-flow order: stages as in ``schema.STAGES``, attn2 layers in UNet order."""
    steps = {(r["stage"], r["layer"]) for r in rows if r["stage"] in STAGES}

    def key(step):
        stage, layer = step
        return (STAGES.index(stage), layer_order(layer))

    return sorted(steps, key=key)


def step_label(stage: str, layer: int | float | str | None) -> str:
    if isinstance(layer, float):  # a table whose layers are all numbers or missing reads them as floats (3.0, NaN)
        layer = None if layer != layer else int(layer)
    if layer is None:
        return stage
    if isinstance(layer, int):
        return f"layer {layer}"
    if is_text_layer(layer):  # SDXL's second encoder: text_2 (token embeddings), text_2.<i>
        return f"{stage} (2)" if "." not in layer else f"layer {layer.rpartition('.')[2]} (2)"
    return f"{stage[0].upper()} {short_layer(layer)}"


def drift_figure(rows: list[dict], path: str | Path, metric: str = "relative_l2") -> Path:
    """One panel per model: the distance to the baseline along the text path (x: stage/layer in data-flow order),
    one line per role with its 95% CI band. Shows at a glance whether context tokens drift as much as the concept."""
    plt, sns = _pyplot()
    rows = [r for r in rows if r["metric"] == metric and r["n"] and r["stage"] in STAGES]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(max(1, len(models)), 1, figsize=(12, 3.2 * max(1, len(models))), squeeze=False)
    palette = dict(zip(ROLE_ORDER, sns.color_palette("colorblind", 4)))
    for ax, model in zip(axes[:, 0], models):
        mine = [r for r in rows if r["model"] == model]
        steps = stage_steps(mine)
        x = {s: i for i, s in enumerate(steps)}
        for role, color in palette.items():
            pts = sorted((x[(r["stage"], r["layer"])], r) for r in mine if r["role"] == role)
            if not pts:
                continue
            xs = [p for p, _ in pts]
            ax.plot(xs, [r["value"] for _, r in pts], marker="o", ms=3, color=color, label=role)
            ax.fill_between(xs, [r["ci_low"] for _, r in pts], [r["ci_high"] for _, r in pts], color=color, alpha=0.2)
        ax.set_xticks(range(len(steps)))
        ax.set_xticklabels([step_label(s, layer) for s, layer in steps], rotation=70, fontsize=7)
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"{model} vs baseline")
        ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def checkpoint_order(names: list[str]) -> list[str]:
    """Model names ordered by the last number in each (``step500`` < ``checkpoint-1000``) when every name has one,
    else in the order given."""
    nums = [re.findall(r"\d+", n) for n in names]
    if names and all(nums):
        return [n for _, n in sorted(zip((int(x[-1]) for x in nums), names), key=lambda t: t[0])]
    return list(names)


def checkpoint_figure(
    rows: list[dict], path: str | Path, metric: str = "relative_l2", roles: tuple[str, ...] = ("concept", "context")
) -> Path:
    """Drift against customized model, one panel per stage: the mean over the stage's layers of each model's
    distance to the baseline, for ``roles`` (lines; CI band = the mean of the layers' CI bounds). Models whose
    names carry a number (checkpoint steps) are ordered by it."""
    plt, sns = _pyplot()
    rows = [r for r in rows if r["metric"] == metric and r["n"] and r["stage"] in STAGES and r["role"] in roles]
    customs = [m for m in dict.fromkeys(r["model"] for r in rows) if m != BASELINE and not m.startswith(ALIGNIT)]
    order = checkpoint_order(customs)
    stages = [s for s in STAGES if any(r["stage"] == s for r in rows)]
    fig, axes = plt.subplots(
        1, max(1, len(stages)), figsize=(3.2 * max(1, len(stages)), 3.4), squeeze=False, sharey=True
    )
    palette = dict(zip(ROLE_ORDER, sns.color_palette("colorblind", 4)))
    for ax, stage in zip(axes[0], stages):
        for role in roles:
            means, lows, highs = [], [], []
            for model in order:
                sel = [r for r in rows if (r["model"], r["stage"], r["role"]) == (model, stage, role)]
                n = max(len(sel), 1)
                means.append(sum(r["value"] for r in sel) / n if sel else float("nan"))
                lows.append(sum(r["ci_low"] for r in sel) / n if sel else float("nan"))
                highs.append(sum(r["ci_high"] for r in sel) / n if sel else float("nan"))
            xs = list(range(len(order)))
            ax.plot(xs, means, marker="o", color=palette[role], label=role)
            ax.fill_between(xs, lows, highs, color=palette[role], alpha=0.2)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order, rotation=45, ha="right", fontsize=8)
        ax.set_title(stage + (" (mean over layers)" if stage in ("encoder_layer", "key", "value") else ""), fontsize=9)
    axes[0, 0].set_ylabel(metric.replace("_", " ") + " to baseline")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
