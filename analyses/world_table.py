"""The paper's table on the toy world: for each customization method, the baseline, the customized model and AlignIT
(plus keys-only, values-only and up-blocks-only AlignIT, and AlignIT taking the end token and padding from the
customized model's dummy prompt instead of the baseline), scored exactly on prompts that put the concept in a context
its references never showed.

    python analyses/world_table.py --out analyses/world/table [--samples 200] [--methods …] [--device cpu]

Trains each method on the concept's references (``alignit-probe world train``; reused when OUT/models/METHOD holds a
finished one), then evaluates every cell on the same prompts and noise (``world eval``'s rows, 95 % bootstrap CIs):
text alignment = the background and the position the prompt names, image alignment = ``concept_fidelity``. Writes
OUT/table.csv (one row per method × model × attribute), OUT/table.md and OUT/table.png.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from _common import Parser, run

from alignit_probe import AlignITOptions, Concept, Probe, ProbeError
from alignit_probe.world.trainers import DEFAULT_TOKENS, METHODS

VARIANTS = {
    "alignit": AlignITOptions(),
    "alignit K only": AlignITOptions(values=False),
    "alignit V only": AlignITOptions(keys=False),
    "alignit up blocks": AlignITOptions(blocks=["up"]),
    "alignit end from dummy": AlignITOptions(end_tokens="dummy"),
}
ATTRIBUTES = ("background", "position", "concept_fidelity")
COLUMNS = ("method", "model", "attribute", "accuracy", "ci_low", "ci_high", "n")


def parse_args(argv=None):
    ap = Parser(__doc__)
    ap.add_argument("--out", required=True, help="output folder (models/, table.csv, table.md, table.png)")
    ap.add_argument("--samples", type=int, default=200, help="prompt × seed samples per cell")
    ap.add_argument("--seed", type=int, default=0, help="seed of training, prompts and noise")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="customization methods")
    ap.add_argument(
        "--ablations",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="K-only, V-only, up-blocks and end-from-dummy AlignIT",
    )
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: each method's)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda …")
    return ap.parse_args(argv)


def train(method: str, folder: Path, args) -> Path:
    from alignit_probe.world.concept import WorldConcept
    from alignit_probe.world.trainers import train_concept

    if (folder / "train_config.json").is_file():
        print(f"{method}: reusing {folder}", flush=True)
        return folder
    concept = WorldConcept(token=DEFAULT_TOKENS[method])
    start = time.time()
    train_concept(method, folder, concept, steps=args.steps, device=args.device, seed=args.seed, progress=False)
    print(f"{method}: trained in {time.time() - start:.0f} s", flush=True)
    return folder


def main() -> int:
    from alignit_probe.world.alignment import concept_rows
    from alignit_probe.world.concept import WorldConcept
    from alignit_probe.world.model import world_pipeline_dir

    args = parse_args()
    if args.samples < 1:
        raise ProbeError(f"--samples {args.samples} is not positive", "pass --samples 200 for the table")
    out = Path(args.out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    baseline = str(world_pipeline_dir())
    variants = VARIANTS if args.ablations else {"alignit": VARIANTS["alignit"]}
    table, started = [], time.time()
    for k, method in enumerate(args.methods):
        folder = train(method, out / "models" / method, args)
        concept = WorldConcept.load(folder)
        concepts = [Concept(concept.token, concept.class_word)]
        probe = Probe(baseline, [str(folder)], concepts, device=args.device, progress=False)
        rows = concept_rows(probe, concept, args.samples, args.seed, variants, with_baseline=k == 0)
        table += [dict(method="—" if r["model"] == "baseline" else method, **r) for r in rows]
        print(f"{method}: evaluated ({time.time() - started:.0f} s so far)", flush=True)
    write_csv(table, out / "table.csv")
    (out / "table.md").write_text(markdown(table, args))
    figure(table, out / "table.png")
    print(f"table.csv, table.md and table.png written to {out} in {time.time() - started:.0f} s")
    return 0


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def markdown(rows: list[dict], args) -> str:
    cell = {(r["method"], r["model"], r["attribute"]): r for r in rows}
    lines = [
        f"{args.samples} prompt × seed samples per cell, seed {args.seed}; accuracy [95% bootstrap CI]",
        "",
        "| method | model | " + " | ".join(ATTRIBUTES) + " |",
        "|---|---|" + "---|" * len(ATTRIBUTES),
    ]
    order = [("—", "baseline")] + [(m, v) for m in args.methods for v in ("custom", *VARIANTS)]
    for method, model in order:
        found = [cell.get((method, model, a)) for a in ATTRIBUTES]
        if any(found):
            values = [f"{r['accuracy']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if r else "" for r in found]
            lines.append(f"| {method} | {model} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "—"))
    models = list(dict.fromkeys(r["model"] for r in rows if r["model"] != "baseline"))
    base = {r["attribute"]: r for r in rows if r["model"] == "baseline"}
    cell = {(r["method"], r["model"], r["attribute"]): r for r in rows}
    fig, axes = plt.subplots(1, len(ATTRIBUTES), figsize=(5 * len(ATTRIBUTES), 3.6), sharey=True)
    width = 0.8 / len(models)
    colors = plt.get_cmap("tab10").colors
    for ax, attribute in zip(axes, ATTRIBUTES):
        for j, model in enumerate(models):
            xs, ys, err = [], [], [[], []]
            for i, method in enumerate(methods):
                r = cell.get((method, model, attribute))
                if r:
                    xs.append(i - 0.4 + (j + 0.5) * width)
                    ys.append(r["accuracy"])
                    err[0].append(r["accuracy"] - r["ci_low"])
                    err[1].append(r["ci_high"] - r["accuracy"])
            ax.bar(xs, ys, width, yerr=err, label=model, color=colors[(j + 1) % 10], capsize=2)
        if attribute in base:
            ax.axhline(base[attribute]["accuracy"], color=colors[0], ls="--", lw=1, label="baseline")
        ax.set_xticks(range(len(methods)), [m.replace("-", "\n") for m in methods], fontsize=8)
        ax.set_title(attribute)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("accuracy (exact scorer)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run(main)
