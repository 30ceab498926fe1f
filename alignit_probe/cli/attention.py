"""``alignit-probe attention``: cross-attention maps of the baseline, each customized model [and AlignIT]
generations, one seed, into one store (with the recorded stages) plus overlay figures. Without ``--custom``: the
baseline's maps alone (DAAM's use), in a store with the baseline's token labels and ``baseline/attention`` only.
``--aggregation daam --map-layers daam`` gives DAAM's global heat maps (see ``capture.attention``)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Literal

from ..errors import ProbeError
from .common import (
    DEFAULT_TEMPLATE,
    Subparsers,
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

if TYPE_CHECKING:
    from ..capture.attention import AttentionSlices


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


def map_layers(specs: list[str] | None) -> list[str] | Literal["daam"] | None:
    """``--map-layers``: None (all attn2 layers), ``daam``, or attn2 paths."""
    if not specs:
        return None
    if "daam" in specs:
        if len(specs) > 1:
            raise ProbeError("--map-layers daam cannot be mixed with paths", "pass either daam or attn2 paths")
        return "daam"
    return specs


def custom_only_flags(args: argparse.Namespace) -> list[str]:
    """The flags given that only mean something with a customized model."""
    given = {
        "--alignit": args.alignit,
        "--concept": args.concept,
        "--class-word": args.class_word,
        "--template": args.template != DEFAULT_TEMPLATE,
        "--layers": args.layers,
        "--blocks": args.blocks,
        "--resolutions": args.resolutions,
        "--keys-only": args.keys_only,
        "--values-only": args.values_only,
        "--alpha": args.alpha != 1.0,
        "--denoiser": args.denoiser != "custom",
    }
    return [flag for flag, on in given.items() if on]


def baseline_only(args: argparse.Namespace, slices: AttentionSlices) -> int:
    """The baseline's maps alone: images/, overlays/ and a store with ``baseline`` labels + ``baseline/attention``."""
    from ..capture.sites import attn2_paths
    from ..record.branches import baseline_tokens, write_maps_store
    from ..record.run import versions
    from ..schema import BASELINE
    from ..viz.overlay import write_overlays

    flags = custom_only_flags(args)
    if flags:
        raise ProbeError(f"{flags[0]} needs a customized model", f"pass --custom SPEC, or drop {flags[0]}")
    prompts, gen = read_prompts(args), generation_kwargs(args)
    out = out_dir(args.out, args.overwrite)
    probe = make_probe(args, need_custom=False)
    maps = probe.baseline_attention(prompts, slices=slices, **gen)
    pipe = probe.baseline_only()
    tokenized = baseline_tokens(pipe, prompts)
    model = dict(model_id=args.baseline, method="baseline", artifacts=[], warnings=[], dtype=args.dtype)
    model.update(device=str(pipe.unet.device), seed=args.seed, sites=attn2_paths(pipe.unet))
    root = dict(versions=versions(), command=sys.argv, options={"attention": {**gen, "baseline_only": True}})
    with staged_folder(out) as tmp:
        save_images({name: images for name, (_, images) in maps.items()}, tmp / "images")
        write_overlays(maps, {BASELINE: tokenized}, prompts, tmp / "overlays")
        write_maps_store(tmp / "store.zarr", tokenized, maps[BASELINE][0], attrs=root, model_attrs=model)
    print(done_line(out, "/baseline/attention"))
    return 0


def done_line(out: object, node: str) -> str:
    from ..viz.overlay import OVERLAY_TOKENS

    return (
        f"maps in {out}/store.zarr ({node}), overlays of the first {OVERLAY_TOKENS} tokens of each prompt in "
        f"{out}/overlays (every token's map is in the store), images in {out}/images"
    )


def cmd_attention(args: argparse.Namespace) -> int:
    from ..capture.attention import AttentionSlices
    from ..record.run import RecordOptions, check_job
    from ..viz.overlay import write_overlays

    slices = AttentionSlices(
        per_layer=args.per_layer,
        per_head=args.per_head,
        step_windows=windows(args.step_window),
        native=args.native,
        aggregation=args.aggregation,
        layers=map_layers(args.map_layers),
    )
    generation_kwargs(args)  # --steps first, then the windows within them, before any model loads
    slices.check_steps(args.steps)
    if not args.custom:
        return baseline_only(args, slices)
    if not args.concept:
        raise ProbeError(
            "--custom needs --concept TOKEN", "pass the concept's token in the prompts, e.g. --concept sks"
        )
    concepts, prompts = concepts_from(args), read_prompts(args)
    options = alignit_options(args)
    gen = generation_kwargs(args)
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
    print(done_line(out, "/<model>/attention"))
    return 0


def add_parser(sub: Subparsers) -> None:
    p = subparser(
        sub, "attention", "cross-attention maps of baseline[, customized and AlignIT] generations into a store"
    )
    add_model_args(p, custom_required=False, concept_required=False)
    add_alignit_args(p)
    add_generation_args(p)
    g = p.add_argument_group("maps")
    g.add_argument("--alignit", action="store_true", help="also the AlignIT generation's maps")
    g.add_argument("--per-layer", action="store_true", help="also keep one map per attn2 layer")
    g.add_argument("--per-head", action="store_true", help="also keep one map per head and layer")
    g.add_argument("--native", action="store_true", help="also keep per-layer maps at native resolution")
    g.add_argument("--step-window", action="append", metavar="START:STOP", help="also sum over these steps")
    g.add_argument(
        "--aggregation",
        choices=("bilinear", "daam"),
        default="bilinear",
        help="bilinear: head mean, bilinear upsampling; daam: each head bicubic-upsampled, clamped at 0, then the mean",
    )
    g.add_argument(
        "--map-layers",
        nargs="+",
        metavar="PATH|daam",
        help="attn2 layers summed into the maps (default: all); daam: DAAM's (all but the mid block's)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_attention)
