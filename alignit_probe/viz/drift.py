"""Diagnostic figures from ``compare`` rows, written as PNG files (matplotlib and seaborn are imported when drawing,
never at import; figures on their own Agg canvas, no pyplot).

``drift_figure``: each model's distance to the baseline along the text path, one line per role.
``checkpoint_figure``: drift against model, one panel per stage, concept vs context: checkpoints of one run
(``run_steps``) ordered by step and joined with lines, any other set of customized models as points in the order
given. CIs are drawn only where n ≥ ``MIN_CI`` prompts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..schema import ALIGNIT, BASELINE, STAGES, is_text_layer, layer_order, short_layer
from .figures import drawing, has_ci, legend_outside, metric_label, new_figure, zero_floor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROLE_ORDER = ("concept", "context", "special", "padding")
LAYERED = ("encoder_layer", "key", "value")
# a training step in a model's name or path: checkpoint-500, ckpt_500, step500, steps-500 (learned_embeds-steps-500),
# epoch-3, iter1000; or a name that is a number
STEP = re.compile(r"(?:checkpoint|ckpt|steps?|epoch|iter(?:ation)?)[-_=]?(\d+)", re.IGNORECASE)


def role_palette() -> dict[str, tuple]:
    import seaborn as sns

    return dict(zip(ROLE_ORDER, sns.color_palette("colorblind", 4)))


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=120, pil_kwargs={"compress_level": 1})  # as ``figures.png_bytes``: zlib's 6 is 5x the time
    fig.clear()
    return path


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
    one line per role with its 95% CI band where n ≥ ``MIN_CI`` prompts (the line alone below). Shows at a glance
    whether context tokens drift as much as the concept."""
    rows = [r for r in rows if r["metric"] == metric and r["n"] and r["stage"] in STAGES]
    models = list(dict.fromkeys(r["model"] for r in rows))
    with drawing():
        fig = new_figure(12, 3.2 * max(1, len(models)) + 0.3)
        axes = fig.subplots(max(1, len(models)), 1, squeeze=False)[:, 0]
        palette = role_palette()
        for ax, model in zip(axes, models):
            mine = [r for r in rows if r["model"] == model]
            steps = stage_steps(mine)
            x = {s: i for i, s in enumerate(steps)}
            flat = [role for role in palette if (v := [r["value"] for r in mine if r["role"] == role]) and not any(v)]
            if len(flat) > 1:  # lines on top of each other at 0 (AlignIT's context, special, padding): said
                ax.annotate(
                    f"at 0 everywhere (lines overlap): {', '.join(flat)}",
                    (0.995, 0.1),
                    xycoords="axes fraction",
                    ha="right",
                    fontsize=8,
                    color="dimgray",
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.85),
                )
            for role, color in palette.items():
                pts = sorted(((x[(r["stage"], r["layer"])], r) for r in mine if r["role"] == role), key=lambda t: t[0])
                if not pts:
                    continue
                xs = [p for p, _ in pts]
                ax.plot(xs, [r["value"] for _, r in pts], marker="o", ms=3, color=color, label=role, clip_on=False)
                band = [has_ci(r) for _, r in pts]
                if any(band):
                    lows = [r["ci_low"] if c else float("nan") for (_, r), c in zip(pts, band)]
                    highs = [r["ci_high"] if c else float("nan") for (_, r), c in zip(pts, band)]
                    ax.fill_between(xs, lows, highs, where=band, color=color, alpha=0.2, linewidth=0)
            ax.set_xticks(range(len(steps)))
            ax.set_xticklabels([step_label(s, layer) for s, layer in steps], rotation=70, fontsize=7)
            ax.set_ylabel(metric_label(metric))
            ax.set_title(f"{model} vs baseline")
            zero_floor(ax)
        legend_outside(fig, axes)
        return save(fig, path)


def checkpoint_order(names: list[str]) -> list[str]:
    """Model names ordered by the last number in each (``step500`` < ``checkpoint-1000``) when every name has one,
    else in the order given."""
    nums = [re.findall(r"\d+", n) for n in names]
    if names and all(nums):
        return [n for _, n in sorted(zip((int(x[-1]) for x in nums), names), key=lambda t: t[0])]
    return list(names)


def run_steps(sources: Mapping[str, Sequence[str]]) -> dict[str, int] | None:
    """{model: training step} when the customized models are checkpoints of one run, else None. ``sources``: each
    model's name first, then its SPEC paths. They are when, for the names or else for the paths, every model has a
    step (``STEP``: ``checkpoint-500``, ``step500``, ``learned_embeds-steps-500``, …, or a name that is a number),
    the steps differ, and the texts are the same once the step is taken out (``run/checkpoint-500`` and
    ``run/checkpoint-1000``: one run, with ``run`` itself, the output folder, last; ``db`` and ``lora``, or
    ``a/checkpoint-5`` and ``b/checkpoint-9``: not)."""
    if len(sources) < 2:
        return None
    names = {m: str(list(s)[0]) for m, s in sources.items()}
    paths = {m: " ".join(map(str, list(s)[1:])) for m, s in sources.items()}
    for texts in (names, paths):
        steps = {m: int(t) if t.isdigit() else int((STEP.findall(t) or [-1])[-1]) for m, t in texts.items()}
        final = [m for m, step in steps.items() if step < 0]
        if texts is paths and len(final) == 1 and len(steps) > 2:  # the run's output folder next to its checkpoints
            root = texts[final[0]].rstrip("/") + "/"
            if all(texts[m].startswith(root) for m in steps if m != final[0]):
                steps[final[0]] = max(steps.values()) + 1  # last: what training ended with
                texts = {m: t for m, t in texts.items() if m != final[0]}  # (the checkpoints' shapes must agree)
        shapes = {"#" if t.isdigit() else STEP.sub("#", t) for t in texts.values()}
        if min(steps.values()) >= 0 and len(set(steps.values())) == len(steps) and len(shapes) == 1 < len(texts):
            return dict(sorted(steps.items(), key=lambda kv: kv[1]))
    return None


def mean_point(sel: list[dict]) -> dict | None:
    """The mean of rows (a stage's layers): value, CI bounds, and the most prompts of any."""
    if not sel:
        return None
    mean = {
        k: sum(r[k] for r in sel) / len(sel) for k in ("value", "ci_low", "ci_high") if None not in (r[k] for r in sel)
    }
    return dict(mean, n=max(r["n"] for r in sel)) if "value" in mean else None


def checkpoint_figure(
    rows: list[dict],
    path: str | Path,
    metric: str = "relative_l2",
    roles: tuple[str, ...] = ("concept", "context"),
    steps: Mapping[str, int] | None = None,
) -> Path:
    """Each customized model's distance to the baseline, one panel per stage (the mean over the stage's layers), for
    ``roles``; error bars (the mean of the layers' CI bounds) where n ≥ ``MIN_CI`` prompts. ``steps`` ({model:
    training step}, ``run_steps``): the models are checkpoints of one run, ordered by step and joined with lines;
    without it, models in the order given, points only (unrelated models are no progression)."""
    rows = [r for r in rows if r["metric"] == metric and r["n"] and r["stage"] in STAGES and r["role"] in roles]
    customs = [m for m in dict.fromkeys(r["model"] for r in rows) if m != BASELINE and not m.startswith(ALIGNIT)]
    order = [m for m in steps if m in customs] if steps else customs
    stages = [s for s in STAGES if any(r["stage"] == s for r in rows)]
    with drawing():
        fig = new_figure(max(6.0, 2.8 * max(1, len(stages))), 3.6)
        axes = fig.subplots(1, max(1, len(stages)), squeeze=False, sharey=True)[0]
        palette = role_palette()
        for ax, stage in zip(axes, stages):
            for k, role in enumerate(roles):
                points = [
                    mean_point([r for r in rows if (r["model"], r["stage"], r["role"]) == (model, stage, role)])
                    for model in order
                ]
                xs = [i + (k - (len(roles) - 1) / 2) * (0 if steps else 0.12) for i in range(len(order))]
                vals = [p["value"] if p else float("nan") for p in points]
                style = dict(marker="o", color=palette[role], label=role, clip_on=False, zorder=3)
                ax.plot(xs, vals, linestyle="-" if steps else "none", **style)
                for x, p in zip(xs, points):
                    if has_ci(p):
                        err = [[max(p["value"] - p["ci_low"], 0)], [max(p["ci_high"] - p["value"], 0)]]
                        ax.errorbar([x], [p["value"]], yerr=err, fmt="none", capsize=3, ecolor=palette[role])
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels(order, rotation=45, ha="right", fontsize=8)
            ax.set_xlim(-0.5, len(order) - 0.5)
            ax.set_title(stage + (" (mean over layers)" if stage in LAYERED else ""), fontsize=9)
        zero_floor(axes)
        axes[0].set_ylabel(metric_label(metric) + " to baseline")
        legend_outside(fig, axes)
        return save(fig, path)
