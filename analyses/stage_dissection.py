"""Stage dissection: how far each customized model is from its baseline at every stage of the text path, for the
concept tokens and for the context tokens (the rest of the prompt), with 95% CIs over prompts.

    python analyses/stage_dissection.py STORE [STORE…] [--out table.csv] [--metric relative_l2]

STORE is a store of `alignit-probe record` (zarr or .nc), or every shard of one job (`record --shard I/N`), read as
one. Stages: token_embedding, encoder_layer (mean over the text-encoder layers), encoder_output, key and value (mean
over the attn2 layers). Prints one row per model and stage (concept, context, and their ratio: context drift
relative to the concept's) and writes the tidy rows to CSV with --out. AlignIT branches of a store recorded with
--alignit are rows too (K/V only).
"""

from __future__ import annotations

import argparse

from _common import ROLES, STAGES, Parser, add_store_args, fmt_ci, open_stores, output_path, run, stage_table


def parse_args(argv=None) -> argparse.Namespace:
    ap = Parser(__doc__)
    add_store_args(ap)
    ap.add_argument("--out", metavar="CSV", help="write the rows (model, stage, role, metric, value, ci_low, …) here")
    ap.add_argument("--model", nargs="+", metavar="NAME", help="only these models (default: every one but baseline)")
    ap.add_argument(
        "--roles",
        nargs="+",
        default=["concept", "context"],
        choices=ROLES,
        help="token roles (default: concept context)",
    )
    return ap.parse_args(argv)


def print_table(rows, roles) -> None:
    head = f"{'model':14} {'stage':16} {'layers':>6} " + " ".join(f"{r + ' [95% CI]':>30}" for r in roles)
    ratio = "concept" in roles and "context" in roles
    print(head + (f" {'context/concept':>16}" if ratio else ""))
    for (model, stage), grp in rows.groupby(["model", "stage"], sort=False):
        by_role = {r.role: r for r in grp.itertuples()}
        cells = [fmt_ci(r.value, r.ci_low, r.ci_high) if (r := by_role.get(role)) else "—" for role in roles]
        line = f"{model:14} {stage:16} {int(grp.layers.iloc[0]):6d} " + " ".join(f"{c:>30}" for c in cells)
        if ratio:
            c, x = by_role.get("concept"), by_role.get("context")
            q = x.value / c.value if c is not None and x is not None and c.value else float("nan")
            line += f" {q:16.3f}"
        print(line)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = output_path(args.out, (".csv",)) if args.out else None
    tree = open_stores(args.stores)
    rows = stage_table(
        tree,
        metric=args.metric,
        roles=tuple(args.roles),
        stages=STAGES,
        models=args.model,
        n_boot=args.n_boot,
        seed=args.seed,
    )
    print(f"distance to the baseline ({args.metric}), mean over prompts [95% bootstrap CI], n = {rows.n.max()} prompts")
    print_table(rows, args.roles)
    if out is not None:
        rows.to_csv(out, index=False)
        print(f"rows written to {out}")
    return 0


if __name__ == "__main__":
    run(main)
