"""``alignit-probe attention``: cross-attention maps of baseline, customized [and AlignIT] generations, one seed,
into one store (with the recorded stages) plus overlay figures."""

from __future__ import annotations

import sys

from .errors import ProbeError


def add_arguments(p) -> None:
    p.add_argument("--alignit", action="store_true", help="also the AlignIT generation's maps")
    p.add_argument("--per-layer", action="store_true", help="also keep one map per attn2 layer")
    p.add_argument("--per-head", action="store_true", help="also keep one map per head and layer")
    p.add_argument("--native", action="store_true", help="also keep per-layer maps at native resolution")
    p.add_argument("--step-window", action="append", metavar="START:STOP", help="also sum over these steps")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true")


def _windows(specs):
    if not specs:
        return None
    out = []
    for s in specs:
        try:
            a, b = (int(x) for x in s.split(":"))
        except ValueError:
            raise ProbeError(f"step window {s!r} is not START:STOP", "write e.g. --step-window 0:10") from None
        out.append((a, b))
    return out


def cmd_attention(args) -> int:
    from . import cli
    from .attention import AttentionSlices
    from .attention_store import generation_maps, write_overlays
    from .generate import alignit_kv, validate
    from .probe import record_store
    from .alignit_store import write_alignit_branch

    concepts, prompts = cli.concepts_from(args), cli.read_prompts(args)
    options = cli.alignit_options(args)
    try:
        slices = AttentionSlices(per_layer=args.per_layer, per_head=args.per_head,
                                 step_windows=_windows(args.step_window), native=args.native)
    except ValueError as e:
        raise ProbeError(f"bad step window: {e}", "use START:STOP with 0 <= START < STOP") from None
    out = cli._out_dir(args.out, args.overwrite)
    pair = cli.load_models(args)
    validate(pair, concepts, options)
    akv = alignit_kv(pair, concepts, prompts, options)
    maps = generation_maps(pair, akv, include_alignit=args.alignit, slices=slices, seed=args.seed, steps=args.steps,
                           guidance_scale=args.guidance_scale, height=args.height, width=args.width)
    tokenized = {"baseline": akv.baseline, "custom": akv.custom, "alignit": [p.tokens for p in akv.plans]}

    def extra(writer, custom_tp, base_tp):
        if args.alignit:
            write_alignit_branch(writer, pair, concepts, prompts, options)
        for name, (ds, _) in maps.items():
            writer.put(f"{name}/attention", ds)

    with cli.staged_folder(out) as tmp:
        cli.save_images({name: images for name, (_, images) in maps.items()}, tmp / "images")
        write_overlays(maps, tokenized, prompts, tmp / "overlays")
        record_store(pair, concepts, prompts, tmp / "store.zarr", seed=args.seed, progress=not args.no_progress,
                     command=sys.argv, extra=extra)
    print(f"maps in {out}/store.zarr (/<model>/attention), overlays in {out}/overlays, images in {out}/images")
    return 0
