"""AlignIT before/after: each customized model's drift from the baseline next to its AlignIT branch's, per stage and
token role (concept vs context), with 95% CI bars over prompts.

    python analyses/alignit_before_after.py STORE [STORE…] --out fig.png [--csv rows.csv] [--metric relative_l2]

STORE is a store recorded with `alignit-probe record … --alignit` (or every shard of one such job). AlignIT takes
every token's K/V from the baseline on the prompt without the modifier and only the concept span's from the
customized model, so its context tokens sit exactly on the baseline (distance 0 at key and value) while the concept
keeps the customization. The text stages (token_embedding, encoder_layer, encoder_output) are the customized model's
alone: AlignIT changes only the K/V the UNet reads. Layered stages are means over layers (see analyses/README.md).
"""

from __future__ import annotations

import numpy as np
from _common import (
    IMAGE_SUFFIXES,
    STAGES,
    Parser,
    add_store_args,
    alignit_branch_of,
    customized,
    fmt_ci,
    open_stores,
    output_path,
    run,
    stage_table,
)

from alignit_probe import ProbeError

ROLES = ("concept", "context")
COLORS = {("before", "concept"): "#0173b2", ("before", "context"): "#56b4e9"}
COLORS |= {("after", "concept"): "#d55e00", ("after", "context"): "#f0a35e"}


def parse_args(argv=None):
    ap = Parser(__doc__)
    add_store_args(ap)
    ap.add_argument("--out", required=True, metavar="FIG", help="figure file (.png, .pdf, .svg, .jpg)")
    ap.add_argument("--csv", metavar="CSV", help="also write the rows behind the figure here")
    return ap.parse_args(argv)


def pairs(tree) -> list[tuple[str, str]]:
    """(customized model, its AlignIT branch) for every customized model that has one."""
    found = [(m, a) for m in customized(tree) if (a := alignit_branch_of(tree, m))]
    if not found:
        raise ProbeError("the store has no AlignIT branch", "record it with `alignit-probe record … --alignit`")
    return found


def draw(rows, found, metric: str, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(found), 1, figsize=(9, 3.4 * len(found)), squeeze=False)
    width = 0.2
    for ax, (model, branch) in zip(axes[:, 0], found):
        bars = [("before", model, role) for role in ROLES] + [("after", branch, role) for role in ROLES]
        for k, (when, name, role) in enumerate(bars):
            sel = rows[(rows.model == name) & (rows.role == role)].set_index("stage").reindex(list(STAGES))
            x = np.arange(len(STAGES)) + (k - 1.5) * width
            err = np.vstack([sel.value - sel.ci_low, sel.ci_high - sel.value])
            label = f"{name}: {role}"
            ax.bar(x, sel.value, width, yerr=err, capsize=2, color=COLORS[(when, role)], label=label)
            for xi, v in zip(x, sel.value):
                if v == 0:  # exactly on the baseline: a bar of height 0, so say it
                    ax.annotate("0", (xi, 0), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
        ax.set_xticks(np.arange(len(STAGES)))
        ax.set_xticklabels(
            [s + (" (mean over layers)" if s in ("encoder_layer", "key", "value") else "") for s in STAGES], fontsize=8
        )
        ax.set_ylabel(f"{metric.replace('_', ' ')} to baseline")
        ax.set_title(f"{model} (before) vs {branch} (after AlignIT); error bars: 95% CI over prompts", fontsize=10)
        ax.axvspan(-0.5, 2.5, color="0.94", zorder=-1)  # the text path: AlignIT changes only the K/V
        ax.set_xlim(-0.5, len(STAGES) - 0.5)
        ax.set_xlabel("grey: text encoder (AlignIT leaves it alone)   |   white: K/V the UNet reads", fontsize=8)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.2)  # room for the legend
        ax.legend(fontsize=8, ncol=4, loc="upper center", frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = output_path(args.out, IMAGE_SUFFIXES)
    csv = output_path(args.csv, (".csv",)) if args.csv else None
    tree = open_stores(args.stores)
    found = pairs(tree)
    names = [n for pair in found for n in pair]
    rows = stage_table(tree, metric=args.metric, roles=ROLES, models=names, n_boot=args.n_boot, seed=args.seed)
    print(f"distance to the baseline ({args.metric}), mean over prompts [95% bootstrap CI], n = {rows.n.max()} prompts")
    print(f"{'model':14} {'stage':16} " + " ".join(f"{r + ' [95% CI]':>30}" for r in ROLES))
    for (model, stage), grp in rows.groupby(["model", "stage"], sort=False):
        by_role = {r.role: r for r in grp.itertuples()}
        cells = [fmt_ci(r.value, r.ci_low, r.ci_high) if (r := by_role.get(role)) else "—" for role in ROLES]
        print(f"{model:14} {stage:16} " + " ".join(f"{c:>30}" for c in cells))
    draw(rows, found, args.metric, out)
    print(f"figure written to {out}")
    if csv is not None:
        rows.to_csv(csv, index=False)
        print(f"rows written to {csv}")
    return 0


if __name__ == "__main__":
    run(main)
