"""``compare``'s readable table and ``alignit-probe report`` (drift figures, rows.json, summary.md)."""

from __future__ import annotations

import json

from .cli import _json_safe, _out_dir


def print_table(rows: list[dict], tree) -> None:
    from . import store as st

    for w in st.store_attrs(tree).get("warnings", []):
        print(f"warning: {w}")
    for model in st.models(tree):
        for w in st.model_attrs(tree, model).get("warnings", []):
            if w not in st.store_attrs(tree).get("warnings", []):
                print(f"warning ({model}): {w}")
    roles = ("concept", "context", "special", "padding")
    header = f"{'model':8} {'stage':15} {'layer':52} {'metric':16}" + "".join(f" {r:>22}" for r in roles)
    print(header)
    print("-" * len(header))
    cells: dict[tuple, dict] = {}
    for r in rows:
        cells.setdefault((r["model"], r["stage"], r["layer"], r["metric"]), {})[r["role"]] = r
    for (model, stage, layer, metric), by_role in cells.items():
        shown = "" if layer is None else str(layer)
        line = f"{model:8} {stage:15} {shown:52} {metric:16}"
        for role in roles:
            r = by_role.get(role)
            line += f" {r['value']:7.4f} [{r['ci_low']:.3f},{r['ci_high']:.3f}]" if r and r["n"] else f" {'-':>22}"
        print(line)
    n = max((r["n"] for r in rows), default=0)
    print(f"value [95% bootstrap CI over {n} prompts]; distance of each model to the baseline on role-aligned tokens")
    if "embedding" in tree["custom"].children:
        emb = tree["custom/embedding"].to_dataset().load()
        print("\nlearned embeddings (norm vs vocabulary; nearest vocabulary tokens):")
        for v in emb.vector.values:
            e = emb.sel(vector=v)
            near = ", ".join(f"{t} ({c:.2f})" for t, c in zip(e.neighbor_token.values, e.neighbor_cosine.values))
            print(f"  {e.vector_token.item():14} norm {e.norm.item():.3f} (percentile {e.norm_percentile.item():.1f}, "
                  f"z {e.norm_z.item():+.2f})  nearest: {near}")


def cmd_report(args) -> int:
    """A diagnostic report folder: drift figure, tidy rows (JSON), and a short markdown summary."""
    from . import store as st
    from .metrics import compare_rows
    from .plots import drift_figure

    tree = st.open_store(args.store)
    out = _out_dir(args.out, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    rows = compare_rows(tree)
    (out / "rows.json").write_text(json.dumps([{k: _json_safe(v) for k, v in r.items()} for r in rows], indent=1))
    drift_figure(rows, out / "drift_relative_l2.png", "relative_l2")
    drift_figure(rows, out / "drift_cosine_distance.png", "cosine_distance")
    lines = [f"# alignit-probe report: {args.store}", ""]
    for model in st.models(tree):
        a = st.model_attrs(tree, model)
        lines.append(f"- **{model}**: {a.get('method')} — {a.get('custom_ids') or a.get('model_id')}")
        lines += [f"  - warning: {w}" for w in a.get("warnings", [])]
    lines += ["", "| model | stage | role | mean relative L2 over layers |", "|---|---|---|---|"]
    for model in sorted({r["model"] for r in rows}):
        for stage in ("token_embedding", "encoder_layer", "encoder_output", "key", "value"):
            for role in ("concept", "context"):
                vals = [r["value"] for r in rows if (r["model"], r["stage"], r["role"], r["metric"]) ==
                        (model, stage, role, "relative_l2") and r["n"]]
                if vals:
                    lines.append(f"| {model} | {stage} | {role} | {sum(vals) / len(vals):.4f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"report written to {out}")
    return 0
