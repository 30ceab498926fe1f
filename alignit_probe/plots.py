"""Diagnostic figures from ``compare`` rows (matplotlib/seaborn imported only when plotting)."""

from __future__ import annotations

from pathlib import Path

STAGE_ORDER = ("token_embedding", "encoder_layer", "encoder_output", "key", "value")


def drift_figure(rows: list[dict], path: str | Path, metric: str = "relative_l2") -> Path:
    """One panel per model: the distance to the baseline along the text path (x: stage/layer in data-flow order),
    one line per role with its 95% CI band. Shows at a glance whether context tokens drift as much as the concept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = [r for r in rows if r["metric"] == metric and r["n"]]
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(len(models), 1, figsize=(12, 3.2 * len(models)), squeeze=False)
    palette = dict(zip(("concept", "context", "special", "padding"), sns.color_palette("colorblind", 4)))
    for ax, model in zip(axes[:, 0], models):
        mine = [r for r in rows if r["model"] == model]
        steps = []
        for stage in STAGE_ORDER:
            for r in mine:
                if r["stage"] == stage and (stage, r["layer"]) not in steps:
                    steps.append((stage, r["layer"]))
        x = {s: i for i, s in enumerate(steps)}
        for role, color in palette.items():
            pts = sorted((x[(r["stage"], r["layer"])], r) for r in mine if r["role"] == role)
            if not pts:
                continue
            xs = [p for p, _ in pts]
            ax.plot(xs, [r["value"] for _, r in pts], marker="o", ms=3, color=color, label=role)
            ax.fill_between(xs, [r["ci_low"] for _, r in pts], [r["ci_high"] for _, r in pts], color=color, alpha=.2)
        ax.set_xticks(range(len(steps)))
        ax.set_xticklabels([_short(s, layer) for s, layer in steps], rotation=70, fontsize=7)
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"{model} vs baseline")
        ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _short(stage: str, layer) -> str:
    if layer is None:
        return stage
    if isinstance(layer, int):
        return f"layer {layer}"
    parts = str(layer).split(".")
    return f"{stage[0].upper()} {parts[0].replace('_blocks', '').replace('_block', '')}{parts[1] if parts[1].isdigit() else ''}.{parts[3] if len(parts) > 3 and parts[3].isdigit() else ''}"
