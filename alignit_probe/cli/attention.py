"""``alignit-probe attention``: cross-attention maps of the baseline, each customized model [and AlignIT]
generations, one seed, into one store (with the recorded stages) plus overlay figures."""

from __future__ import annotations

import sys

from ..errors import ProbeError
from .common import (
    add_alignit_args,
    add_generation_args,
    add_model_args,
    alignit_options,
    check_concepts,
    concepts_from,
    generation_kwargs,
    make_probe,
    out_dir,
    read_prompts,
    save_images,
    staged_folder,
    subparser,
)


def windows(specs: list[str] | None) -> list[tuple[int, int]] | None:
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
    from ..capture.attention import AttentionSlices
    from ..record.run import RecordOptions, check_job
    from ..viz.overlay import write_overlays

    concepts, prompts = concepts_from(args), read_prompts(args)
    options = alignit_options(args)
    gen = generation_kwargs(args)
    slices = AttentionSlices(
        per_layer=args.per_layer, per_head=args.per_head, step_windows=windows(args.step_window), native=args.native
    )
    out = out_dir(args.out, args.overwrite)
    check_concepts(args)
    probe = make_probe(args)
    check_job(probe.models, concepts, prompts, RecordOptions(alignit=options))
    maps, tokenized = {}, {}
    for name in probe.models.names:
        akv = probe.alignit_kv(prompts, options, model=name)
        got = probe.attention(prompts, options, model=name, alignit=args.alignit, slices=slices, **gen)
        for branch in got:
            tokenized[branch] = {"baseline": akv.baseline, name: akv.custom}.get(branch, [p.tokens for p in akv.plans])
        maps.update(got)
    nodes = {f"{name}/attention": ds for name, (ds, _) in maps.items()}
    with staged_folder(out) as tmp:
        save_images({name: images for name, (_, images) in maps.items()}, tmp / "images")
        write_overlays(maps, tokenized, prompts, tmp / "overlays")
        probe.record(
            prompts,
            tmp / "store.zarr",
            seed=args.seed,
            alignit=options if args.alignit else False,
            command=sys.argv,
            nodes=nodes,
        )
    print(f"maps in {out}/store.zarr (/<model>/attention), overlays in {out}/overlays, images in {out}/images")
    return 0


def add_parser(sub) -> None:
    p = subparser(sub, "attention", "cross-attention maps of baseline, customized [and AlignIT] into a store")
    add_model_args(p)
    add_alignit_args(p)
    add_generation_args(p)
    g = p.add_argument_group("maps")
    g.add_argument("--alignit", action="store_true", help="also the AlignIT generation's maps")
    g.add_argument("--per-layer", action="store_true", help="also keep one map per attn2 layer")
    g.add_argument("--per-head", action="store_true", help="also keep one map per head and layer")
    g.add_argument("--native", action="store_true", help="also keep per-layer maps at native resolution")
    g.add_argument("--step-window", action="append", metavar="START:STOP", help="also sum over these steps")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_attention)
