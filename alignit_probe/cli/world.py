"""``alignit-probe world {pretrain, pipeline, references, train, eval}``: the toy world — a pretrained tiny model whose
images are scored exactly, customization trainers writing diffusers' formats, and prompt-alignment evaluation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ProbeError
from ..world.model import GUIDANCE, STEPS

if TYPE_CHECKING:
    import torch

from .common import Formatter, Subparsers, out_dir, subparser
from .world_train import add_train_parser


def cmd_pretrain(args: argparse.Namespace) -> int:
    from ..models.specs import check_device
    from ..world.pretrain import Recipe, pretrain

    device = check_device(args.device)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ProbeError(f"output {out} already exists", "pass --overwrite or choose another --out")
    if not out.parent.is_dir():
        raise ProbeError(f"folder {out.parent} does not exist", "create it first or choose another --out")
    for name in ("steps", "batch"):
        if getattr(args, name) < 1:
            raise ProbeError(f"--{name} {getattr(args, name)} is not positive", f"pass --{name} 1 or more")
    recipe = Recipe(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        text_lr=args.text_lr,
        seed=args.seed,
        max_seconds=60 * args.max_minutes,
        eval_samples=args.eval_samples,
        vae_steps=args.vae_steps,
    )
    acc = pretrain(out, recipe, device, log_path=args.log)
    print(json.dumps(acc) if args.json else f"world weights written to {out} (held-out accuracy {acc})")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from ..models.toy import save_pipeline
    from ..outputs import mark
    from ..world.model import world_pipeline

    out = out_dir(args.out, args.overwrite)
    save_pipeline(world_pipeline(args.weights), out)
    mark(out)  # (a later --overwrite may replace it)
    print(f"world pipeline written to {out}")
    return 0


def resolve_baseline(spec: str) -> str:
    """``world`` (the shipped model), a weights file from ``world pretrain``, or a pipeline folder → a folder."""
    from ..world.model import world_pipeline_dir

    if spec == "world":
        return str(world_pipeline_dir())
    path = Path(spec)
    if path.is_file() and path.suffix == ".safetensors":
        return str(world_pipeline_dir(path))
    return spec


def cmd_eval(args: argparse.Namespace) -> int:
    from ..models.load import load_pipeline
    from ..models.specs import check_device
    from ..world.alignment import baseline_rows

    if args.samples < 1:
        raise ProbeError(f"--samples {args.samples} is not positive", "pass --samples 1 or more (200 for a table)")
    if args.steps < 1:
        raise ProbeError(f"--steps {args.steps} is not positive", "pass --steps 1 or more")
    device = check_device(args.device)
    if args.custom is None:
        for flag in ("concept", "class_word", "concept_spec"):
            if getattr(args, flag) and not args.alignit:
                raise ProbeError(f"--{flag.replace('_', '-')} needs --custom", "pass --custom SPEC or drop it")
        if args.alignit:
            raise ProbeError("--alignit needs a customized model", "pass --custom SPEC --concept TOKEN")
        pipe = load_pipeline(resolve_baseline(args.baseline), device)
        gen = dict(steps=args.steps, guidance=args.guidance_scale)
        rows = baseline_rows(pipe, args.samples, args.seed, progress=not args.no_progress, **gen)
    else:
        rows = custom_rows(args, device)
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'model':10} {'attribute':17} {'accuracy':>8}  95% CI          n")
        for r in rows:
            print(
                f"{r['model']:10} {r['attribute']:17} {r['accuracy']:8.3f}  "
                f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] {r['n']:4d}"
            )
    return 0


def custom_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    from ..alignit.engine import AlignITOptions
    from ..probe import Probe
    from ..text.concepts import Concept
    from ..world.alignment import concept_rows
    from ..world.concept import WorldConcept, parse_spec

    if not args.concept:
        raise ProbeError("--custom needs the concept's token", "pass --concept TOKEN (e.g. <new1> or sks)")
    if args.concept_spec:
        concept = parse_spec(args.concept_spec, args.concept, args.class_word)
    else:
        concept = WorldConcept.load(args.custom.split("=", 1)[-1])
        concept.token = args.concept
        if args.class_word and args.class_word != concept.class_word:
            raise ProbeError(
                f"--class-word {args.class_word} is not the concept's {concept.class_word}",
                f"pass --class-word {concept.class_word}, or --concept-spec to describe another concept",
            )
    probe = Probe(
        resolve_baseline(args.baseline),
        [args.custom],
        [Concept(concept.token, concept.class_word)],
        device=str(device),
        progress=not args.no_progress,
    )
    probe.speaks_cli = True
    variants = {"alignit": AlignITOptions(end_tokens=args.end_tokens)} if args.alignit else None
    return concept_rows(
        probe, concept, args.samples, args.seed, variants, steps=args.steps, guidance=args.guidance_scale
    )


def add_parser(sub: Subparsers) -> None:
    world = subparser(sub, "world", "the toy world: pretrained model, exact scorer, trainers, evaluation")
    cmds = world.add_subparsers(dest="world_command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return cmds.add_parser(name, help=help_text, formatter_class=Formatter, allow_abbrev=False)

    p = command("pretrain", "train the world model from scratch (the recipe of the shipped weights)")
    p.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--steps", type=int, default=6000, help="training steps (at most)")
    p.add_argument("--batch", type=int, default=128, help="scenes per step")
    p.add_argument("--lr", type=float, default=1e-3, help="UNet learning rate")
    p.add_argument("--text-lr", type=float, default=1e-4, help="text-encoder learning rate (0 freezes it)")
    p.add_argument("--vae-steps", type=int, default=1500, help="VAE training steps (first)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="fit the steps to this wall-clock budget")
    p.add_argument("--eval-samples", type=int, default=192, help="held-out captions per validation")
    p.add_argument("--device", default=None, help="cpu, cuda … (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything")
    p.add_argument("--log", default=None, help="also append the log to this file")
    p.add_argument("--json", action="store_true", help="print the kept checkpoint's accuracies as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_pretrain)

    p = command("pipeline", "write the pretrained world model as a diffusers pipeline folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--weights", default=None, help="weights from `world pretrain` (default: the shipped ones)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_pipeline)

    add_train_parser(cmds)

    p = command("eval", "exact prompt alignment: baseline, customized model and AlignIT, with 95%% bootstrap CIs")
    p.add_argument("--baseline", default="world", help="world (shipped), a `world pretrain` file, or a pipeline dir")
    p.add_argument("--custom", metavar="SPEC", help="customized model: artifact folder/file or pipeline folder")
    p.add_argument("--concept", metavar="TOKEN", help="the concept's token (<new1>, sks …)")
    p.add_argument("--class-word", metavar="WORD", help="the concept's class word (its shape, e.g. triangle)")
    p.add_argument(
        "--concept-spec",
        metavar="A=V,…",
        help="what the concept looks like (shape=…,color=…,pattern=…[,background=REFERENCES' BACKGROUND]); "
        "default: the world_concept.json next to --custom",
    )
    p.add_argument("--alignit", action="store_true", help="also AlignIT's images (rows model=alignit)")
    p.add_argument(
        "--end-tokens",
        choices=("baseline", "dummy"),
        default="baseline",
        help="AlignIT's end token and padding: the baseline's (the paper) or the customized model's dummy prompt's",
    )
    p.add_argument("--samples", type=int, default=200, help="prompt × seed samples")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and noise")
    p.add_argument("--steps", type=int, default=STEPS, help="denoising steps (the world's default)")
    p.add_argument("--guidance-scale", type=float, default=GUIDANCE, help="guidance (the world's default)")
    p.add_argument("--device", default=None, help="cpu, cuda … (default: cuda if available)")
    p.add_argument(
        "--json", action="store_true", help='print rows {"model","attribute","accuracy","ci_low","ci_high","n"}'
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)
