"""``alignit-probe toy build``: the embedded tiny SD1.x pipeline (or its SD2.x / SDXL siblings, ``--arch``),
written in diffusers format."""

from __future__ import annotations

import argparse

from .common import Formatter, Subparsers, subparser


def cmd_toy_build(args: argparse.Namespace) -> int:
    from ..models.toy import build_toy

    out = build_toy(args.out, seed=args.seed, overwrite=args.overwrite, arch=args.arch)
    print(f"toy pipeline written to {out}")
    return 0


def add_parser(sub: Subparsers) -> None:
    toy = subparser(sub, "toy", "the embedded tiny models (SD1.x; SD2.x and SDXL shaped)")
    cmds = toy.add_subparsers(dest="toy_command", required=True, metavar="COMMAND")
    build = cmds.add_parser(
        "build", help="write the toy pipeline in diffusers format", formatter_class=Formatter, allow_abbrev=False
    )
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    build.add_argument("--arch", choices=("sd1", "sd2", "sdxl"), default="sd1", help="architecture")
    build.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    build.set_defaults(func=cmd_toy_build)
