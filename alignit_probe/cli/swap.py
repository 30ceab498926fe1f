"""``alignit-probe swap``: keys from prompt A, values from prompt B (the paper's K/V semantic control)."""

from __future__ import annotations

import argparse
import json

from ..errors import ProbeError
from .common import (
    Subparsers,
    add_generation_args,
    add_model_args,
    generation_kwargs,
    make_probe,
    out_dir,
    save_images,
    staged_folder,
    subparser,
)


def cmd_swap(args: argparse.Namespace) -> int:
    from ..viz.grid import image_grid

    gen = generation_kwargs(args)
    out = out_dir(args.out, args.overwrite)
    if args.custom and not args.concept:
        raise ProbeError("--custom needs --concept", "name the customized model's token with --concept")
    probe = make_probe(args, need_custom=False)
    images = probe.swap(
        args.key_prompt,
        args.value_prompt,
        key_model=args.key_model,
        value_model=args.value_model,
        denoiser=args.denoiser,
        tokens=args.tokens,
        layers=args.layers,
        blocks=args.blocks,
        **gen,
    )
    if args.custom and {args.key_model, args.value_model, args.denoiser} == {"baseline"}:
        import warnings

        from ..errors import ProbeWarning

        warnings.warn(
            "the customized model is loaded but unused: keys, values and denoiser were all the baseline's "
            "(--key-model, --value-model or --denoiser NAME use it)",
            ProbeWarning,
            stacklevel=2,
        )
    config = {
        "key_prompt": args.key_prompt,
        "value_prompt": args.value_prompt,
        "key_model": args.key_model,
        "value_model": args.value_model,
        "denoiser": args.denoiser,
        "tokens": args.tokens,
        "layers": args.layers,
        "blocks": args.blocks,
        **gen,
    }
    with staged_folder(out) as tmp:
        save_images(images, tmp / "images")
        image_grid(
            images,
            [f"K: {args.key_prompt} | V: {args.value_prompt}"],
            tmp / "grid.png",
            caption=f"values swapped at {', '.join(args.tokens) if args.tokens else 'all tokens'}; "
            f"layers: {', '.join(args.blocks or []) or 'all'} | seed {gen['seed']}, {gen['steps']} steps",
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
    print(f"images, grid.png and config.json written to {out}")
    return 0


def add_parser(sub: Subparsers) -> None:
    p = subparser(sub, "swap", "keys from prompt A, values from prompt B (K/V semantic control)")
    add_model_args(p, custom_required=False, concept_required=False, prompts=False)  # (--key/--value-prompt)
    g = p.add_argument_group("swap")
    g.add_argument("--key-prompt", required=True, metavar="A", help="prompt whose keys (and layout) are kept")
    g.add_argument("--value-prompt", required=True, metavar="B", help="prompt whose values are written in")
    g.add_argument("--key-model", default="baseline", metavar="NAME", help="model of the keys: baseline or a NAME")
    g.add_argument("--value-model", default="baseline", metavar="NAME", help="model of the values: baseline or a NAME")
    g.add_argument("--denoiser", default="baseline", metavar="NAME", help="model that denoises: baseline or a NAME")
    g.add_argument("--tokens", nargs="+", metavar="WORD", help="swap values only at these words of A (default: all)")
    g.add_argument("--layers", nargs="+", metavar="PATH", help="swap only at these attn2 layers (default: all)")
    g.add_argument("--blocks", nargs="+", choices=("down", "mid", "up"), help="swap only in these UNet blocks")
    add_generation_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_swap)
