"""``alignit-probe report``: a diagnostic report folder for a store — drift figures (per model, and against model
for several customized models), tidy rows (JSON) and a markdown summary."""

from __future__ import annotations

import json

from ..schema import STAGES
from .common import json_safe, out_dir, subparser


def cmd_report(args) -> int:
    from .. import compare, open_shards
    from .. import store as st
    from ..viz.drift import checkpoint_figure, drift_figure

    tree = open_shards(args.store)
    out = out_dir(args.out, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    frame = compare(tree)
    rows = [{k: json_safe(v) for k, v in r.items()} for r in frame.astype(object).to_dict("records")]
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    figures = [drift_figure(rows, out / f"drift_{m}.png", m) for m in ("relative_l2", "cosine_distance")]
    customs = st.store_attrs(tree).get("custom_models") or []
    if len(customs) > 1:
        figures += [
            checkpoint_figure(rows, out / f"checkpoints_{m}.png", m) for m in ("relative_l2", "cosine_distance")
        ]
    lines = [f"# alignit-probe report: {', '.join(map(str, args.store))}", ""]
    for model in st.models(tree):
        a = st.model_attrs(tree, model)
        lines.append(f"- **{model}**: {a.get('method')} — {a.get('custom_ids') or a.get('model_id')}")
        lines += [f"  - warning: {w}" for w in a.get("warnings", [])]
    lines += ["", "| model | stage | role | mean relative L2 over layers | mean 95% CI |", "|---|---|---|---|---|"]
    for model in frame.model.unique():
        for stage in STAGES:
            for role in ("concept", "context"):
                sel = frame[
                    (frame.model == model)
                    & (frame.stage == stage)
                    & (frame.role == role)
                    & (frame.metric == "relative_l2")
                    & (frame.n > 0)
                ]
                if len(sel):
                    lines.append(
                        f"| {model} | {stage} | {role} | {sel.value.mean():.4f} | "
                        f"[{sel.ci_low.mean():.4f}, {sel.ci_high.mean():.4f}] |"
                    )
    lines += [""] + [f"![{f.stem}]({f.name})" for f in figures]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"report written to {out}")
    return 0


def add_parser(sub) -> None:
    p = subparser(sub, "report", "drift figures, rows.json and summary.md for a store")
    p.add_argument("store", nargs="+", help="a store, or every shard of one")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_report)
