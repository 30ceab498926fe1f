"""``alignit-probe alignit`` (baseline / customized / AlignIT images, grid, store) and ``alignit-probe swap``
(keys from prompt A, values from prompt B)."""

from __future__ import annotations

import sys

from .cli import (DTYPES, _out_dir, _torch_dtype, add_alignit_args, add_generation_args, add_model_args,
                  alignit_options, concepts_from, default_device, load_models, read_prompts, save_images,
                  staged_folder)
from .errors import ProbeError


def cmd_alignit(args) -> int:
    """Baseline, customized and AlignIT images (same seed), a labeled grid, and a store with the alignit branch."""
    from .alignit_store import write_alignit_branch
    from .generate import generate_alignit, validate
    from .probe import progress_bar, record_store
    from .report import image_grid

    concepts, prompts = concepts_from(args), read_prompts(args)
    options = alignit_options(args)
    out = _out_dir(args.out, args.overwrite)
    pair = load_models(args)
    validate(pair, concepts, options)
    images, _ = generate_alignit(pair, concepts, prompts, options, seed=args.seed, steps=args.steps,
                                 guidance_scale=args.guidance_scale, height=args.height, width=args.width)

    def extra(writer, custom_tp, base_tp):
        bar = progress_bar(len(prompts), "record alignit", not args.no_progress)
        write_alignit_branch(writer, pair, concepts, prompts, options, progress=bar)
        bar.close()

    with staged_folder(out) as tmp:
        save_images(images, tmp / "images")
        image_grid(images, prompts, tmp / "grid.png")
        record_store(pair, concepts, prompts, tmp / "store.zarr", seed=args.seed, progress=not args.no_progress,
                     command=sys.argv, extra=extra)
    print(f"images, grid.png and store.zarr written to {out}")
    return 0


def cmd_swap(args) -> int:
    """Keys from prompt A and values from prompt B (semantic control)."""
    from .control import Source, generate_swap
    from .report import image_grid

    out = _out_dir(args.out, args.overwrite)
    if args.custom:
        if not args.concept:
            raise ProbeError("--custom needs --concept", "name the customized model's token with --concept")
        pair = load_models(args)
        models = {"baseline": pair.baseline, "custom": pair.custom}
    else:
        from .load import load_pipeline

        models = {"baseline": load_pipeline(args.baseline, args.device or default_device(),
                                            _torch_dtype(args.dtype))}
    for flag in ("key_model", "value_model", "denoiser"):
        if getattr(args, flag) not in models:
            raise ProbeError(f"--{flag.replace('_', '-')} custom needs a customized model", "pass --custom SPEC")
    images = generate_swap(Source(models[args.key_model], args.key_prompt),
                           Source(models[args.value_model], args.value_prompt), models[args.denoiser],
                           tokens=args.tokens, layers=args.layers, blocks=args.blocks, seed=args.seed,
                           steps=args.steps, guidance_scale=args.guidance_scale, height=args.height, width=args.width)
    with staged_folder(out) as tmp:
        save_images(images, tmp)
        image_grid(images, [f"K: {args.key_prompt} | V: {args.value_prompt}"], tmp / "grid.png")
    print(f"swap images and grid.png written to {out}")
    return 0


def add_parsers(sub) -> None:
    al = sub.add_parser("alignit", help="baseline / customized / AlignIT images, grid, and store with alignit branch")
    add_model_args(al)
    add_alignit_args(al)
    add_generation_args(al)
    al.add_argument("--out", required=True, help="output folder")
    al.add_argument("--overwrite", action="store_true")
    al.set_defaults(func=cmd_alignit)

    sw = sub.add_parser("swap", help="keys from prompt A, values from prompt B (K/V semantic control)")
    sw.add_argument("--baseline", required=True)
    sw.add_argument("--custom", action="append", metavar="SPEC")
    sw.add_argument("--concept", action="append", metavar="TOKEN")
    sw.add_argument("--class-word", action="append", metavar="WORD")
    sw.add_argument("--key-prompt", required=True, metavar="A")
    sw.add_argument("--value-prompt", required=True, metavar="B")
    sw.add_argument("--key-model", choices=("baseline", "custom"), default="baseline")
    sw.add_argument("--value-model", choices=("baseline", "custom"), default="baseline")
    sw.add_argument("--denoiser", choices=("baseline", "custom"), default="baseline")
    sw.add_argument("--tokens", nargs="+", metavar="WORD", help="swap values only at these words of A")
    sw.add_argument("--layers", nargs="+", metavar="PATH")
    sw.add_argument("--blocks", nargs="+", choices=("down", "mid", "up"))
    sw.add_argument("--device", default=None)
    sw.add_argument("--dtype", choices=DTYPES, default="float32")
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--no-progress", action="store_true")
    add_generation_args(sw)
    sw.add_argument("--out", required=True)
    sw.add_argument("--overwrite", action="store_true")
    sw.set_defaults(func=cmd_swap)
