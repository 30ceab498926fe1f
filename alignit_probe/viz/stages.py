"""Divergence along the text path from ``compare`` rows, every customized model and its AlignIT branch on the same
axes, with the rows' 95% bootstrap CIs as error bars where n ≥ ``MIN_CI`` prompts (the value alone below).

``stage_figure``: one point per stage in data-flow order, concept and context side by side; stages recorded per
layer (``encoder_layer``, ``key``, ``value``) are averaged over their layers (value and CI bounds: the mean of the
layers'). SDXL's two text encoders are stages of their own (``token_embedding (text)``, ``… (text_2)``: their
widths and layers differ), and its ``pooled`` embedding (one per prompt, role ``special``) is summarised as the
whole prompt's. ``kv_layer_figure``: K and V at every attn2 layer in UNet order (down, mid, up). Both return PNG
bytes, or None without rows to draw. matplotlib/seaborn are imported when drawing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..schema import (
    BASELINE,
    BLOCK_ORDER,
    KV_STAGES,
    POOLED,
    SECOND_ENCODER,
    STAGES,
    block_of,
    short_layer,
    unet_order_key,
)
from .figures import (
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
    from matplotlib.axes import Axes

ROLES = ("concept", "context")
LAYERED = ("encoder_layer", "key", "value")


def usable(rows: list[dict], metric: str, stages: Sequence[str] = STAGES) -> list[dict]:
    """Rows of ``metric`` and ``stages`` with a value (``n`` > 0), the reference itself excluded."""
    return [
        r
        for r in rows
        if r["metric"] == metric
        and r["stage"] in stages
        and r["n"]
        and r["value"] is not None
        and r["model"] != r.get("reference", BASELINE)
    ]


ENCODER_STAGES = ("token_embedding", "encoder_layer")  # recorded per text encoder (SDXL: two)
WHOLE_PROMPT = "whole prompt"  # the role ``pooled`` is summarised under (one vector per prompt)


def encoder_of(row: dict) -> str | None:
    """SDXL's second text encoder (``text_2``) for its token-embedding and layer rows, else None."""
    layer = row.get("layer")
    if row["stage"] in ENCODER_STAGES and isinstance(layer, str):
        if layer == SECOND_ENCODER or layer.startswith(SECOND_ENCODER + "."):
            return SECOND_ENCODER
    return None


def stage_summary(rows: list[dict], metric: str = "relative_l2") -> list[dict]:
    """One entry per (model, stage, role): ``value``, ``ci_low``, ``ci_high`` (means over the stage's layers),
    ``layers`` (how many were averaged), ``n`` (prompts, the most of any layer) and ``base`` (the schema stage);
    model by model (in the rows' order), stages in data-flow order.

    Where a store holds SDXL's second text encoder, each encoder's ``token_embedding`` and ``encoder_layer`` are
    stages of their own, ``… (text)`` and ``… (text_2)``; ``pooled`` rows (role ``special``) become role
    ``whole prompt``."""
    groups: dict[tuple, list[dict]] = {}
    picked = usable(rows, metric)
    two = any(encoder_of(r) for r in picked)
    for r in picked:
        stage, role = r["stage"], r["role"]
        if stage == POOLED:
            if role != "special":
                continue
            role = WHOLE_PROMPT
        if two and stage in ENCODER_STAGES:
            stage = f"{stage} ({encoder_of(r) or 'text'})"
        groups.setdefault((r["model"], stage, role, r["stage"]), []).append(r)
    out = []
    for (model, stage, role, base), sel in groups.items():
        mean = lambda k, sel=sel: sum(r[k] for r in sel) / len(sel)  # noqa: E731
        out.append(
            dict(
                model=model,
                stage=stage,
                base=base,
                role=role,
                value=mean("value"),
                ci_low=mean("ci_low"),
                ci_high=mean("ci_high"),
                layers=len(sel),
                n=max(r["n"] for r in sel),
            )
        )
    order = {m: i for i, m in enumerate(dict.fromkeys(r["model"] for r in rows))}
    return sorted(out, key=lambda s: (order[s["model"]], STAGES.index(s["base"]), s["stage"]))


def stage_label(stage: str, layers: int) -> str:
    """An x tick: the stage, below it its encoder (SDXL) and how many layers its point averages, a line each."""
    base, _, encoder = stage.partition(" ")
    notes = [encoder.strip("()")] if encoder else []
    notes += [f"mean of {layers} layers"] if base in LAYERED and layers > 1 else []
    return "\n".join([base, *(f"({n})" for n in notes)])


def stage_figure(rows: list[dict], metric: str = "relative_l2", roles: Sequence[str] = ROLES) -> bytes | None:
    """Each branch's distance to the baseline per stage (x, data-flow order), one panel per role that has rows."""
    summary = [s for s in stage_summary(rows, metric) if s["role"] in roles]
    if not summary:
        return None
    roles = [r for r in roles if any(s["role"] == r for s in summary)]
    models = list(dict.fromkeys(s["model"] for s in summary))
    stages = list(
        dict.fromkeys(x["stage"] for x in sorted(summary, key=lambda x: (STAGES.index(x["base"]), x["stage"])))
    )
    layers = {s: max(x["layers"] for x in summary if x["stage"] == s) for s in stages}
    cell = {(x["model"], x["stage"], x["role"]): x for x in summary}
    with drawing():
        styles = branch_styles(models)
        fig = new_figure(max(6.0, 1.6 * len(stages)) * len(roles) / 1.4, 4.0)
        axes = fig.subplots(1, len(roles), squeeze=False)[0]
        for ax, role in zip(axes, roles):
            for off, model in zip(dodge(len(models), 0.35), models):
                pts = [cell.get((model, s, role)) for s in stages]
                if any(pts):
                    errorbar_series(ax, range(len(stages)), pts, off, model, styles[model])
            ax.set_xticks(range(len(stages)), [stage_label(s, layers[s]) for s in stages], fontsize=7)
            ax.set_title(f"{role} tokens")
            ax.set_ylabel(f"{metric_label(metric)} to baseline")
            zero_floor(ax)
        legend_outside(fig, axes)
        return png_bytes(fig)


def kv_layer_figure(rows: list[dict], metric: str = "relative_l2", roles: Sequence[str] = ROLES) -> bytes | None:
    """K (top) and V (bottom) divergence at every attn2 layer, x in UNet order with short layer labels and the
    down / mid / up blocks marked; one column per role."""
    rows = [r for r in usable(rows, metric, KV_STAGES) if r["role"] in roles and isinstance(r["layer"], str)]
    if not rows:
        return None
    roles = [r for r in roles if any(x["role"] == r for x in rows)]
    models = list(dict.fromkeys(r["model"] for r in rows))
    paths = sorted({r["layer"] for r in rows}, key=unet_order_key)
    cell = {(r["model"], r["stage"], r["layer"], r["role"]): r for r in rows}
    stages = [s for s in KV_STAGES if any(r["stage"] == s for r in rows)]
    with drawing():
        styles = branch_styles(models)
        fig = new_figure(max(5.0, 0.45 * len(paths) + 1.5) * len(roles), 2.9 * len(stages) + 0.4)
        axes = fig.subplots(len(stages), len(roles), squeeze=False, sharex=True)
        for i, stage in enumerate(stages):
            for j, role in enumerate(roles):
                ax = axes[i, j]
                for off, model in zip(dodge(len(models), 0.4), models):
                    pts = [cell.get((model, stage, p, role)) for p in paths]
                    if any(pts):
                        errorbar_series(ax, range(len(paths)), pts, off, model, styles[model])
                mark_blocks(ax, paths)
                ax.set_title(f"{'K' if stage == 'key' else 'V'} · {role} tokens", pad=14)
                zero_floor(ax)
                if j == 0:
                    ax.set_ylabel(f"{metric_label(metric)} to baseline")
                if i == len(stages) - 1:
                    ax.set_xticks(range(len(paths)), [short_layer(p) for p in paths], rotation=60, fontsize=7)
        legend_outside(fig, axes.ravel(), ncol=len(models))
        return png_bytes(fig)


def mark_blocks(ax: Axes, paths: list[str]) -> None:
    """Dotted lines between the down / mid / up blocks and each block's name above its layers."""
    blocks = [block_of(p) for p in paths]
    for k in range(1, len(paths)):
        if blocks[k] != blocks[k - 1]:
            ax.axvline(k - 0.5, color="0.5", linestyle=":", linewidth=1)
    for block in BLOCK_ORDER:
        idx = [k for k, b in enumerate(blocks) if b == block]
        if idx:
            ax.text(
                (idx[0] + idx[-1]) / 2,
                1.0,
                block,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
                color="0.35",
            )
