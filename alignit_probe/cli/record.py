"""``alignit-probe record``: every stage of the baseline and each customized model (``--custom [NAME=]SPEC``) on
a prompt set, streamed into one store; ``--alignit`` adds the AlignIT branches; ``--summary`` stores per-token
distances to the baseline instead of the activations."""

from __future__ import annotations

import argparse
import sys

from .common import (
    Subparsers,
    add_alignit_args,
    add_model_args,
    alignit_options,
    check_concepts,
    concepts_from,
    make_probe,
    read_prompts,
    subparser,
)


def cmd_record(args: argparse.Namespace) -> int:
    from ..record.run import RecordOptions, check_job
    from ..store.layout import check_output
    from ..store.shards import parse_shard, shard_range

    concepts, prompts = concepts_from(args), read_prompts(args)
    shard = parse_shard(args.shard)
    shard_range(len(prompts), args.batch_size, shard)  # fail before loading models
    check_output(args.out, args.overwrite)
    check_concepts(args)
    options = RecordOptions(
        batch_size=args.batch_size,
        clip_skip=args.clip_skip,
        seed=args.seed,
        store_dtype=args.store_dtype,
        drop_padding=args.drop_padding,
        shard=shard,
        alignit=alignit_options(args) if args.alignit else None,
        summary=args.summary,
    )
    options.check()
    probe = make_probe(args)
    check_job(probe.models, concepts, prompts, options)  # before any work: a bad option leaves no partial store
    out = probe.record(
        prompts,
        args.out,
        batch_size=options.batch_size,
        clip_skip=options.clip_skip,
        seed=options.seed,
        store_dtype=options.store_dtype,
        drop_padding=options.drop_padding,
        shard=shard,
        alignit=options.alignit or False,
        summary=options.summary,
        overwrite=args.overwrite,
        command=sys.argv,
    )
    print(f"store written to {out}")
    return 0


def add_parser(sub: Subparsers) -> None:
    rec = subparser(sub, "record", "record every text-encoding stage of the baseline and each customized model")
    add_model_args(rec)
    g = rec.add_argument_group("store")
    g.add_argument("--out", required=True, help="store: a .zarr folder (default) or a .nc file")
    g.add_argument("--overwrite", action="store_true", help="replace an existing store")
    g.add_argument("--batch-size", type=int, default=8, help="prompts per batch (and per zarr chunk)")
    g.add_argument("--clip-skip", type=int, default=None, help="use the hidden state this many layers before the last")
    g.add_argument("--store-dtype", choices=("float32", "float16"), default="float32", help="dtype of stored arrays")
    g.add_argument(
        "--drop-padding",
        action="store_true",
        help="keep only the first T token positions, T = the longest prompt (end token included)",
    )
    g.add_argument("--shard", metavar="I/N", help="record only shard I of N (0-based; contiguous runs of batches)")
    g.add_argument("--alignit", action="store_true", help="also write the AlignIT branch of each model (no images)")
    g.add_argument(
        "--summary",
        action="store_true",
        help="store per-token distances to the baseline (computed on the device; kilobytes per prompt) instead of "
        "the activations: compare gives the same rows, nothing else can be read back",
    )
    add_alignit_args(rec)
    rec.set_defaults(func=cmd_record)
