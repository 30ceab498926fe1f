"""Analysis: does the customized model drift on the *context* tokens as much as on the concept? (the paper's finding)

    python analyses/drift_by_role.py STORE [--metric relative_l2]

Prints, per stage, the mean distance to the baseline of concept vs context tokens and their ratio, from the public
API only (`open_store`, `compare_rows`).
"""

import argparse
from collections import defaultdict

from alignit_probe.analysis.metrics import compare_rows
from alignit_probe.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--metric", default="relative_l2", choices=("relative_l2", "cosine_distance"))
    args = ap.parse_args()
    rows = [r for r in compare_rows(open_store(args.store)) if r["metric"] == args.metric and r["n"]]
    table = defaultdict(list)
    for r in rows:
        table[(r["model"], r["stage"], r["role"])].append(r["value"])
    print(f"{'model':8} {'stage':16} {'concept':>8} {'context':>8} {'context/concept':>16}")
    for model in sorted({m for m, _, _ in table}):
        for stage in ("token_embedding", "encoder_layer", "encoder_output", "key", "value"):
            c, x = table.get((model, stage, "concept")), table.get((model, stage, "context"))
            if c and x:
                mc, mx = sum(c) / len(c), sum(x) / len(x)
                print(f"{model:8} {stage:16} {mc:8.4f} {mx:8.4f} {mx / mc if mc else float('nan'):16.3f}")


if __name__ == "__main__":
    main()
