"""``alignit-probe compare``: distances of each model to the baseline per stage, layer and role — a readable table
(UNet order, short layer labels with a legend, filters) or tidy JSON rows for scripts."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TYPE_CHECKING, TextIO

from ..analysis.stats import MIN_CI, fmt
from ..errors import ProbeError
from ..schema import ATTENTION_METRICS, BASELINE, METRICS, ROLES, STAGES, layer_label
from ..text.byte_level import token_text
from .common import Subparsers, json_safe, subparser

if TYPE_CHECKING:
    import xarray as xr


def store_warnings(tree: xr.DataTree) -> list[str]:
    """Every warning kept in the store (root and branches), each once, labeled with its branch."""
    from .. import store as st

    out = list(st.store_attrs(tree).get("warnings") or [])
    for model in st.models(tree):
        out += [
            f"({model}) {w}"
            for w in st.model_attrs(tree, model).get("warnings") or []
            if w not in out and f"({model}) {w}" not in out
        ]
    return list(dict.fromkeys(out))


def filter_rows(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    keep = {"stage": args.stage, "role": args.role, "metric": args.metric, "model": args.model}
    return [r for r in rows if all(v is None or r[k] in v for k, v in keep.items())]


def cell(r: dict | None) -> str:
    if not r or not r["n"]:
        return "-"
    if r["n"] < MIN_CI:
        return fmt(r["value"])
    return f"{fmt(r['value'])} [{fmt(r['ci_low'], 3)},{fmt(r['ci_high'], 3)}]"


def print_table(rows: list[dict], tree: xr.DataTree, out: TextIO | None = None) -> None:
    from .. import store as st

    out = out or sys.stdout
    roles = [r for r in ("concept", "context", "special", "padding") if any(x["role"] == r for x in rows)]
    cells: dict[tuple, dict] = {}
    for r in rows:
        cells.setdefault((r["model"], r["stage"], r["layer"], r["metric"]), {})[r["role"]] = r
    legend = {}
    lines = []
    for (model, stage, layer, metric), by_role in cells.items():
        label = layer_label(layer)
        if isinstance(layer, str) and label != layer:
            legend[label] = layer
        n = max(r["n"] for r in by_role.values())
        lines.append([model, stage, label, metric, str(n)] + [cell(by_role.get(role)) for role in roles])
    header = ["model", "stage", "layer", "metric", "n"] + roles
    widths = [max(len(x[i]) for x in lines + [header]) for i in range(len(header))]
    fmt = lambda row: "  ".join(v.ljust(w) if i < 4 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))  # noqa: E731
    print(fmt(header), file=out)
    print("-" * len(fmt(header)), file=out)
    for line in lines:
        print(fmt(line), file=out)
    n = max((r["n"] for r in rows), default=0)
    ci = f"value [95% bootstrap CI over prompts, where n >= {MIN_CI}]"
    print(
        f"\n{ci}; n = prompts with tokens of that role (at most {n}); distance of each model to the baseline on "
        "role-aligned tokens",
        file=out,
    )
    if legend:
        print("layers: " + "; ".join(f"{k} = {v}" for k, v in legend.items()), file=out)
    for model, node in ((m, n) for m in st.models(tree) for n in ("embedding", "embedding_2")):
        if node not in tree[model].children:
            continue
        emb = tree[f"{model}/{node}"].to_dataset().load()
        if not emb.sizes.get("vector"):
            continue
        which = " (SDXL's second text encoder)" if node == "embedding_2" else ""
        print(f"\nlearned embeddings of {model}{which} (norm vs vocabulary; nearest vocabulary tokens):", file=out)
        for v in emb.vector.values:
            e = emb.sel(vector=v)
            near = ", ".join(
                f"{token_text(t)} ({c:.2f})" for t, c in zip(e.neighbor_token.values, e.neighbor_cosine.values)
            )
            print(
                f"  {e.vector_token.item():14} norm {e.norm.item():.3f} (percentile {e.norm_percentile.item():.1f}, "
                f"z {e.norm_z.item():+.2f})  nearest: {near}",
                file=out,
            )


def cmd_compare(args: argparse.Namespace) -> int:
    from ..analysis.metrics import compare_rows
    from ..record.run import progress_bar
    from ..store.shards import connect, open_shards

    client = connect(args.scheduler) if args.scheduler else contextlib.nullcontext()
    with client:
        tree = open_shards(args.store, chunks={} if args.lazy or args.scheduler else None)
        from .. import store as st

        models = st.models(tree)
        if args.model and BASELINE in args.model:
            raise ProbeError(
                f"--model {BASELINE}: the baseline is the reference every row measures the other models against",
                "choose among: " + ", ".join(m for m in models if m != BASELINE),
            )
        if args.model:
            bad = [m for m in args.model if m not in models]
            if bad:
                raise ProbeError(f"no model {bad[0]!r} in the store", "choose among: " + ", ".join(models))
        bar = progress_bar(1, "compare", not args.no_progress and not args.json)
        bar.unit = "array"
        stages = [s for s in STAGES if not args.stage or s in args.stage]
        rows = compare_rows(tree, stages=stages, progress=bar)
        bar.close()
    rows = filter_rows(rows, args)
    if not rows and not any((args.stage, args.role, args.metric, args.model)):  # e.g. a baseline-only maps store
        print(f"note: no rows: {args.store[0]} holds no model to compare with the {BASELINE}", file=sys.stderr)
    elif not rows:
        given = " ".join(
            f"--{k} {' '.join(v)}"
            for k, v in (("stage", args.stage), ("role", args.role), ("metric", args.metric), ("model", args.model))
            if v
        )
        raise ProbeError(
            f"no rows match {given or 'the store'}: the store holds no such stage, role, metric or model",
            "drop or change the filters (compare without them lists every row)",
        )
    for w in store_warnings(tree):
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        json.dump([{k: json_safe(v) for k, v in r.items()} for r in rows], sys.stdout, indent=1)
        print()
    elif rows:
        print_table(rows, tree)
    return 0


def add_parser(sub: Subparsers) -> None:
    p = subparser(sub, "compare", "distances of each model to the baseline, per stage, layer and role")
    p.add_argument("store", nargs="+", help="a store, or every shard of one (read together as one store)")
    p.add_argument("--json", action="store_true", help="print tidy JSON rows")
    p.add_argument("--stage", nargs="+", choices=STAGES + ("attention_map",), help="only these stages")
    p.add_argument("--role", nargs="+", choices=ROLES, help="only these roles")
    p.add_argument("--metric", nargs="+", choices=METRICS + ATTENTION_METRICS, help="only these metrics")
    p.add_argument("--model", nargs="+", metavar="NAME", help="only these models (branches)")
    p.add_argument("--lazy", action="store_true", help="compute on dask-backed arrays (large stores)")
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="compute on this dask.distributed scheduler (e.g. tcp://host:8786); implies --lazy",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)
