"""``alignit-probe world train`` (customize the world model on a concept's references, writing diffusers' training
scripts' output formats) and ``world references`` (the references as PNGs, for diffusers' own scripts)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import ProbeError
from .common import Subparsers, out_dir, staged_folder, subparser

if TYPE_CHECKING:
    from ..world.concept import WorldConcept

METHOD_NAMES = "textual-inversion, custom-diffusion, dreambooth, lora"


def add_concept_args(p: argparse.ArgumentParser, token_help: str) -> None:
    g = p.add_argument_group("concept")
    g.add_argument("--token", default=None, help=token_help)
    g.add_argument("--class-word", default=None, help="the concept's class word: its shape (default: triangle)")
    g.add_argument(
        "--concept-spec",
        default=None,
        metavar="SPEC",
        help="shape=…,color=…,pattern=…[,size=…][,background=…] (default: a large blue striped triangle on white)",
    )


def concept_from(args: argparse.Namespace, token: str) -> WorldConcept:
    """The concept of ``--concept-spec`` / ``--class-word`` (the default concept's look when no spec is given)."""
    from ..world.concept import WorldConcept, parse_spec

    if args.concept_spec is not None:
        return parse_spec(args.concept_spec, token, args.class_word)
    default = WorldConcept()
    look = ",".join(f"{k}={v}" for k, v in default.attributes.items() if k != "shape")
    return parse_spec(f"{look},background={default.background}", token, args.class_word or default.class_word)


def cmd_train(args: argparse.Namespace) -> int:
    from ..world.trainers import DEFAULT_TOKENS, METHODS, train_concept

    if args.method not in METHODS:
        raise ProbeError(f"unknown --method {args.method!r}", f"use one of {METHOD_NAMES}")
    token = args.token or DEFAULT_TOKENS[args.method]
    concept = concept_from(args, token)
    out = train_concept(
        args.method,
        args.out,
        concept,
        baseline=args.baseline,
        steps=args.steps,
        lr=args.lr,
        num_vectors=args.num_vectors,
        rank=args.rank,
        train_text_encoder=args.train_text_encoder,
        references=args.references,
        device=args.device,
        seed=args.seed,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    baseline = "" if args.baseline is None else f" --baseline {args.baseline}"
    print(
        f"{args.method} output written to {out}; evaluate it with: alignit-probe world eval{baseline} --custom {out} "
        f"--concept {token} --class-word {concept.class_word} --alignit --samples 200"
    )
    return 0


def cmd_references(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ..world.concept import CONCEPT_FILE

    if args.n < 1:
        raise ProbeError(f"--n {args.n} is not positive", "pass --n 1 or more (e.g. 8)")
    concept = concept_from(args, args.token or "<new1>")
    out = out_dir(args.out, args.overwrite)
    images = concept.reference_images(args.n, args.seed).permute(0, 2, 3, 1).numpy()
    with staged_folder(out) as tmp:
        (tmp / "images").mkdir()
        for k, image in enumerate(images):
            Image.fromarray((image * 255).round().astype(np.uint8)).save(tmp / "images" / f"{k:03d}.png")
        concept.save(tmp)
    print(
        f"{args.n} references written to {out / 'images'} (the concept in {out / CONCEPT_FILE}); "
        f"for diffusers' scripts pass --instance_data_dir (or --train_data_dir) {out / 'images'} --resolution 32 "
        f"--instance_prompt {concept.train_prompt()!r}"
    )
    return 0


def add_train_parser(cmds: Subparsers) -> None:
    """``world train`` and ``world references``, added to the ``world`` command's subparsers ``cmds``."""
    p = subparser(cmds, "train", "customize the world model on a concept's references (diffusers' output formats)")
    p.add_argument("--method", required=True, metavar="METHOD", help=METHOD_NAMES)
    p.add_argument("--out", required=True, help="output folder (written whole at the end)")
    p.add_argument(
        "--baseline", default=None, help="world weights file or pipeline folder (default: the shipped world model)"
    )
    add_concept_args(p, "the concept's token (default: <new1> for textual-inversion/custom-diffusion, else sks)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=None, help="training steps (default: the method's)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's)")
    g.add_argument("--num-vectors", type=int, default=1, help="textual-inversion: vectors of the placeholder")
    g.add_argument("--rank", type=int, default=4, help="lora: rank of the adapters")
    g.add_argument(
        "--train-text-encoder", action="store_true", help="dreambooth: train the text encoder too (a tenth of the lr)"
    )
    g.add_argument("--references", type=int, default=8, help="reference renders (one batch per step)")
    g.add_argument("--device", default=None, help="cpu, cuda … (default: cuda if available)")
    g.add_argument("--seed", type=int, default=0, help="seed of the references, the noise and the initialisation")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_train)

    p = subparser(cmds, "references", "write a concept's reference renders as PNGs, with world_concept.json")
    p.add_argument("--out", required=True, help="output folder: images/NNN.png and world_concept.json")
    add_concept_args(p, "the concept's token, as you will train it (default: <new1>)")
    p.add_argument("--n", type=int, default=8, help="number of references")
    p.add_argument("--seed", type=int, default=0, help="seed of the renders (world train uses its --seed)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_references)
