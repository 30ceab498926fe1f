"""``alignit-probe merge``: the shards of one job as one store (chunks copied, nothing re-recorded)."""

from __future__ import annotations

import argparse

from .common import Subparsers, subparser


def cmd_merge(args: argparse.Namespace) -> int:
    from ..store.shards import merge_shards

    print(f"store written to {merge_shards(args.shards, args.out, overwrite=args.overwrite)}")
    return 0


def add_parser(sub: Subparsers) -> None:
    p = subparser(sub, "merge", "merge the shards of one job into one store (no recomputation)")
    p.add_argument("shards", nargs="+", help="every shard's store")
    p.add_argument("--out", required=True, help="the merged store (.zarr folder or .nc file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.set_defaults(func=cmd_merge)
