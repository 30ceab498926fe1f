"""Command line: ``alignit-probe {toy build, record, compare, demo, …}``. Uses only the public Python API.

Every bad input ends with one line ``error: <problem> — <fix>`` on stderr and exit status 2, no traceback."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path

from .errors import ProbeError

DTYPES = ("float32", "float16", "bfloat16")


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers|diffusers|xarray|zarr")


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def read_prompts(args) -> list[str]:
    """Prompts from ``--prompt`` or ``--prompts FILE`` (one per line; ``#`` comments; ``{}`` → concept [class])."""
    prompts = list(args.prompt or [])
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise ProbeError(f"prompts file {path} does not exist", "pass a text file with one prompt per line")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        prompts += [ln for ln in lines if ln and not ln.startswith("#")]
        if not prompts:
            raise ProbeError(f"prompts file {path} is empty", "write one prompt per line")
    if not prompts:
        raise ProbeError("no prompts given", "pass --prompt TEXT (repeatable) or --prompts FILE")
    fill = " ".join(x for x in (args.concept[0], (args.class_word or [None])[0]) if x)
    return [p.replace("{}", fill) for p in prompts]


def concepts_from(args):
    from .concepts import Concept

    words = list(args.class_word or [])
    if len(words) > len(args.concept):
        raise ProbeError("more --class-word than --concept values", "give one --class-word per --concept, in order")
    words += [None] * (len(args.concept) - len(words))
    return [Concept(t, w) for t, w in zip(args.concept, words)]


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", required=True, help="baseline pipeline: diffusers directory or hub id")
    p.add_argument("--custom", action="append", required=True, metavar="SPEC",
                   help="customized model: a pipeline directory, or an artifact (TI, A1111 .pt, Custom Diffusion "
                        "folder, LoRA) applied to the baseline; repeat to apply several")
    p.add_argument("--concept", action="append", required=True, metavar="TOKEN", help="placeholder/modifier token")
    p.add_argument("--class-word", action="append", metavar="WORD", help="class word of each --concept, in order")
    p.add_argument("--prompt", action="append", metavar="TEXT")
    p.add_argument("--prompts", metavar="FILE", help="one prompt per line; {} stands for 'TOKEN CLASS'")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def load_models(args):
    from .load import load_pair

    device = args.device or default_device()
    return load_pair(args.baseline, args.custom, device=device, dtype=_torch_dtype(args.dtype),
                     progress=not args.no_progress)


def cmd_toy_build(args) -> int:
    from .toy import build_toy

    out = build_toy(args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"toy pipeline written to {out}")
    return 0


def cmd_record(args) -> int:
    import numpy as np

    from .jobs import parse_shard, shard_range
    from .probe import record_store
    from .store import check_output

    concepts, prompts = concepts_from(args), read_prompts(args)
    shard = parse_shard(args.shard)
    shard_range(len(prompts), args.batch_size, shard)  # fail before loading models
    check_output(args.out, args.overwrite)
    store_dtype = np.float16 if args.store_dtype == "float16" else np.float32
    pair = load_models(args)
    extra, job, min_tokens = None, None, 0
    if args.alignit:
        from .alignit_store import alignit_length, write_alignit_branch
        from .generate import validate
        from .probe import progress_bar

        options = alignit_options(args)
        validate(pair, concepts, options)  # before any work: a bad option never leaves a partial store
        job = {"alignit": vars(options).copy()}
        if args.drop_padding:
            min_tokens = alignit_length(pair, concepts, prompts, options)

        def alignit_branch(writer, custom_tp, base_tp):
            bar = progress_bar(len(custom_tp.span), "record alignit", not args.no_progress)
            write_alignit_branch(writer, pair, concepts, prompts, options, span=custom_tp.span,
                                 batch_size=args.batch_size, store_dtype=store_dtype, progress=bar)
            bar.close()

        extra = alignit_branch
    out = record_store(
        pair, concepts, prompts, args.out, overwrite=args.overwrite, batch_size=args.batch_size,
        clip_skip=args.clip_skip, seed=args.seed, store_dtype=store_dtype,
        progress=not args.no_progress, command=sys.argv, extra=extra, shard=shard, drop_padding=args.drop_padding,
        job=job, min_tokens=min_tokens,
    )
    print(f"store written to {out}")
    return 0


def add_alignit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("AlignIT")
    g.add_argument("--template", default="photo of a {concept}", help="dummy prompt; {concept} = TOKEN [CLASS]")
    g.add_argument("--layers", nargs="+", metavar="PATH", help="attn2 paths to infuse (default: all)")
    g.add_argument("--blocks", nargs="+", choices=("down", "mid", "up"), help="infuse only these UNet blocks")
    g.add_argument("--resolutions", nargs="+", type=int, help="infuse only layers at these map sides (64 32 16 8)")
    kv = g.add_mutually_exclusive_group()
    kv.add_argument("--keys-only", action="store_true")
    kv.add_argument("--values-only", action="store_true")
    g.add_argument("--alpha", type=float, default=1.0, help="blend strength in [0, 1]; 1 = the paper")
    g.add_argument("--denoiser", choices=("custom", "baseline"), default="custom", help="which UNet denoises")


def alignit_options(args):
    from .alignit import check_alpha
    from .generate import AlignITOptions

    check_alpha(args.alpha)
    return AlignITOptions(template=args.template, layers=args.layers, blocks=args.blocks,
                          resolutions=args.resolutions, keys=not args.values_only, values=not args.keys_only,
                          alpha=args.alpha, denoiser=args.denoiser)


def add_generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--steps", type=int, default=30)
    g.add_argument("--guidance-scale", type=float, default=7.5)
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)


@contextlib.contextmanager
def staged_folder(out: Path):
    """Write into ``<out>.partial``; move it to ``out`` only when the block succeeds (else remove it)."""
    import shutil

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def save_images(images: dict, folder: Path) -> None:
    """``images[name][k]`` → ``folder/<k>-<name>.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, imgs in images.items():
        for k, img in enumerate(imgs):
            img.save(folder / f"{k:03d}-{name.replace(' ', '_').replace('+', 'plus')}.png")


def _out_dir(path: str, overwrite: bool) -> Path:
    out = Path(path)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ProbeError(f"output folder {out} is not empty", "pass --overwrite or choose another --out")
    return out


def _json_safe(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def cmd_compare(args) -> int:
    import contextlib

    from .metrics import compare_rows
    from .probe import progress_bar
    from .shards import connect, open_shards

    client = connect(args.scheduler) if args.scheduler else contextlib.nullcontext()
    with client:
        tree = open_shards(args.store, chunks={} if args.lazy or args.scheduler else None)
        n = sum(len(list(tree[m].subtree)) for m in tree.children)
        bar = progress_bar(n, "compare", not args.no_progress and not args.json)
        rows = compare_rows(tree, progress=bar)
        bar.close()
    if args.json:
        from . import store as st

        for model in st.models(tree):
            for w in st.model_attrs(tree, model).get("warnings", []):
                print(f"warning ({model}): {w}", file=sys.stderr)
        json.dump([{k: _json_safe(v) for k, v in r.items()} for r in rows], sys.stdout, indent=1)
        print()
    else:
        from .cli_report import print_table

        print_table(rows, tree)
    return 0


def cmd_merge(args) -> int:
    from .shards import merge_shards

    print(f"store written to {merge_shards(args.shards, args.out, overwrite=args.overwrite)}")
    return 0


def cmd_demo(args) -> int:
    """The main job on the embedded default: toy baseline + toy Custom Diffusion artifact → record → compare."""
    from .toy import build_toy, write_toy_custom_diffusion

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / "toy-baseline"
    if not (base / "model_index.json").exists():
        build_toy(base, seed=args.seed, overwrite=True)
    artifact = out / "toy-custom-diffusion"
    if not (artifact / "pytorch_custom_diffusion_weights.safetensors").exists():
        write_toy_custom_diffusion(base, artifact, token="<new1>", init_word="cat", seed=args.seed)
    store = out / "probe.zarr"
    argv = ["record", "--baseline", str(base), "--custom", str(artifact), "--concept", "<new1>", "--class-word", "cat",
            "--prompt", "photo of a <new1> cat on the beach", "--prompt", "a <new1> cat wearing a red hat",
            "--prompt", "a painting of a <new1> cat in the style of van gogh", "--out", str(store), "--overwrite"]
    if args.no_progress:
        argv.append("--no-progress")
    rc = main(argv) or main(["compare", str(store)] + (["--no-progress"] if args.no_progress else []))
    return rc or main(["report", str(store), "--out", str(out / "report"), "--overwrite"])


def build_parser() -> argparse.ArgumentParser:
    from . import cli_generate, cli_report

    parser = argparse.ArgumentParser(prog="alignit-probe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    toy = sub.add_parser("toy", help="the embedded tiny SD1.x model").add_subparsers(dest="toy_command", required=True)
    build = toy.add_parser("build", help="write the toy pipeline in diffusers format")
    build.add_argument("--out", required=True)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--overwrite", action="store_true")
    build.set_defaults(func=cmd_toy_build)

    rec = sub.add_parser("record", help="record every text-encoding stage of baseline and customized model")
    add_model_args(rec)
    rec.add_argument("--out", required=True, help="store: a .zarr folder (default) or a .nc file")
    rec.add_argument("--overwrite", action="store_true")
    rec.add_argument("--batch-size", type=int, default=8)
    rec.add_argument("--clip-skip", type=int, default=None)
    rec.add_argument("--store-dtype", choices=("float32", "float16"), default="float32")
    rec.add_argument("--drop-padding", action="store_true",
                     help="keep only the first T token positions, T = the longest prompt (end token included)")
    rec.add_argument("--shard", metavar="I/N", help="record only shard I of N (0-based; contiguous runs of batches)")
    rec.add_argument("--alignit", action="store_true", help="also write the alignit branch (no images)")
    add_alignit_args(rec)
    rec.set_defaults(func=cmd_record)

    cli_generate.add_parsers(sub)

    cmp_ = sub.add_parser("compare", help="distances of each model to the baseline, per stage, layer and role")
    cmp_.add_argument("store", nargs="+", help="a store, or every shard of one (read together as one store)")
    cmp_.add_argument("--json", action="store_true", help="print tidy JSON rows")
    cmp_.add_argument("--lazy", action="store_true", help="compute on dask-backed arrays (large stores)")
    cmp_.add_argument("--scheduler", metavar="ADDRESS",
                      help="compute on this dask.distributed scheduler (e.g. tcp://host:8786); implies --lazy")
    cmp_.add_argument("--no-progress", action="store_true")
    cmp_.set_defaults(func=cmd_compare)

    mrg = sub.add_parser("merge", help="merge the shards of one job into one store (no recomputation)")
    mrg.add_argument("shards", nargs="+", help="every shard's store")
    mrg.add_argument("--out", required=True)
    mrg.add_argument("--overwrite", action="store_true")
    mrg.set_defaults(func=cmd_merge)

    from . import cli_attention

    att = sub.add_parser("attention", help="cross-attention maps of baseline, customized [and AlignIT] into a store")
    add_model_args(att)
    add_alignit_args(att)
    add_generation_args(att)
    cli_attention.add_arguments(att)
    att.set_defaults(func=cli_attention.cmd_attention)

    rep = sub.add_parser("report", help="drift figures, rows.json and summary.md for a store")
    rep.add_argument("store")
    rep.add_argument("--out", required=True)
    rep.add_argument("--overwrite", action="store_true")
    rep.set_defaults(func=cli_report.cmd_report)

    demo = sub.add_parser("demo", help="the main job on the embedded toy model (offline)")
    demo.add_argument("--out", default="out/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ProbeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted — rerun the command", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
