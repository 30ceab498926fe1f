"""``alignit-probe alignit``: baseline / customized / AlignIT images with one seed for every customized model, a
labeled grid, and a store with the recorded stages and the AlignIT branches."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from .common import (
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
    from ..alignit.engine import AlignITOptions


def cmd_alignit(args: argparse.Namespace) -> int:
    from ..alignit.engine import options_dict
    from ..models.pipes import is_xl
    from ..record.run import RecordOptions, check_job
    from ..viz.grid import image_grid

    concepts, prompts = concepts_from(args), read_prompts(args)
    options = alignit_options(args)
    gen = generation_kwargs(args)
    out = out_dir(args.out, args.overwrite)
    check_concepts(args)
    probe = make_probe(args)
    check_job(probe.models, concepts, prompts, RecordOptions(alignit=options))
    columns = {}
    for name in probe.models.names:
        images = probe.alignit(prompts, options, model=name, **gen)
        prefix = "" if len(probe.models.names) == 1 else f"{name}: "
        columns.setdefault("baseline", images["baseline"])
        columns[prefix + name if prefix else name] = images[name]
        columns[prefix + "alignit" if prefix else "alignit"] = images["alignit"]
    xl = is_xl(probe.models.baseline)
    config = {"prompts": prompts, "alignit": options_dict(options, xl), **gen, "models": probe.models.names}
    with staged_folder(out) as tmp:
        save_images(columns, tmp / "images")
        image_grid(columns, prompts, tmp / "grid.png", caption=caption(options, gen))
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        probe.record(prompts, tmp / "store.zarr", seed=args.seed, alignit=options, command=sys.argv)
    print(f"images, grid.png, config.json and store.zarr written to {out}")
    return 0


def caption(options: AlignITOptions, gen: dict) -> str:
    what = "K+V" if options.keys and options.values else ("K only" if options.keys else "V only")
    where = ", ".join(options.blocks or []) or (f"{len(options.layers)} layers" if options.layers else "all layers")
    return (
        f"AlignIT {what} at {where}, alpha {options.alpha}, denoiser {options.denoiser}, dummy "
        f"'{options.template}' | seed {gen['seed']}, {gen['steps']} steps, guidance {gen['guidance_scale']}"
    )


def add_parser(sub: Subparsers) -> None:
    p = subparser(sub, "alignit", "baseline / customized / AlignIT images, a grid, and a store with the AlignIT branch")
    add_model_args(p)
    add_alignit_args(p)
    add_generation_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_alignit)
