"""``alignit-probe demo``: everything the toolkit does, offline, on the embedded default — the toy baseline and a toy
Custom Diffusion artifact: record every stage (with AlignIT), compare, baseline / customized / AlignIT images with
their cross-attention maps, a K/V swap, and one self-contained HTML report. Uses only the public API.

``--arch sd2`` runs it on the SD2.x-shaped toy; ``--arch sdxl`` on the SDXL-shaped one, with Custom Diffusion K/V
weights and the token as a two-encoder Textual Inversion (SDXL tokens need vectors for both encoders)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import ProbeError
from .common import Subparsers, save_images, subparser

PROMPTS = (
    "photo of a <new1> cat on the beach",
    "a <new1> cat wearing a red hat",
    "a painting of a <new1> cat in the style of van gogh",
)
SWAP = ("a dog on the grass", "a cat in the snow", ["dog"])


def step(progress: bool, text: str, t0: float) -> None:
    if progress:
        print(f"[{time.perf_counter() - t0:5.1f} s] {text}", file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> int:
    from .. import AlignITOptions, Concept, Probe, build_toy, compare, open_store, write_toy_custom_diffusion
    from ..models.toy import write_toy_textual_inversion
    from ..viz.grid import image_grid
    from ..viz.overlay import write_overlays
    from ..viz.report import report_html, write_html
    from .compare import print_table

    t0, progress = time.perf_counter(), not args.no_progress
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ProbeError(f"output {out} is a file", "choose a folder for --out (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.arch == "sd1" else f"-{args.arch}"
    base, artifact = out / f"toy-baseline{suffix}", out / f"toy-custom-diffusion{suffix}"
    if not (base / "model_index.json").exists():
        build_toy(base, seed=args.seed, overwrite=True, arch=args.arch)
    xl = args.arch == "sdxl"
    if not (artifact / "pytorch_custom_diffusion_weights.safetensors").exists():
        write_toy_custom_diffusion(base, artifact, token=None if xl else "<new1>", init_word="cat", seed=args.seed)
    specs = [str(artifact)]
    if xl:
        specs.append(str(write_toy_textual_inversion(base, out / "toy-textual-inversion-sdxl", seed=args.seed)))
    probe = Probe(base, {"custom": specs}, [Concept("<new1>", "cat")], device="cpu", progress=progress)
    probe.speaks_cli = True
    prompts, gen = list(PROMPTS), dict(seed=args.seed, steps=args.steps, guidance_scale=7.5)

    step(progress, "images and cross-attention maps: baseline / customized / AlignIT", t0)
    maps = probe.attention(prompts, AlignITOptions(), alignit=True, **gen)
    images = {name: imgs for name, (_, imgs) in maps.items()}
    save_images(images, out / "images")
    grid = image_grid(
        images,
        prompts,
        out / "alignit_grid.png",
        caption=f"AlignIT K+V at all layers, alpha 1.0 | seed {args.seed}, {args.steps} steps, guidance 7.5",
    )
    akv = probe.alignit_kv(prompts)
    tokenized = {"baseline": akv.baseline, "custom": akv.custom, "alignit": [p.tokens for p in akv.plans]}
    write_overlays(maps, tokenized, prompts, out / "overlays")

    step(progress, "record every stage (+ AlignIT branch and the maps) into probe.zarr", t0)
    nodes = {f"{name}/attention": ds for name, (ds, _) in maps.items()}
    store = probe.record(prompts, out / "probe.zarr", alignit=True, overwrite=True, nodes=nodes, command=sys.argv)

    step(progress, "K/V swap: keys from A, values from B at 'dog'", t0)
    key_prompt, value_prompt, tokens = SWAP
    swapped = probe.swap(key_prompt, value_prompt, tokens=tokens, **gen)
    swap_grid = image_grid(
        swapped,
        [f"K: {key_prompt} | V: {value_prompt}"],
        out / "swap_grid.png",
        caption=f"values of B written at {', '.join(tokens)} | seed {args.seed}, {args.steps} steps",
    )

    step(progress, "compare and report", t0)
    frame = compare(store)
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    tree = open_store(store)
    print_table([r for r in rows if r["stage"] in ("encoder_output", "key", "value")], tree)
    page = report_html(tree, rows, title=str(store), images={"AlignIT grid": grid, "K/V swap": swap_grid})
    report = write_html(page, out / "report.html")
    step(progress, "done", t0)
    print(f"report: {report.resolve()}")
    return 0


def add_parser(sub: Subparsers) -> None:
    p = subparser(sub, "demo", "everything on the embedded toy model, offline: record, AlignIT, maps, swap, report")
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the toy model, artifact and images")
    p.add_argument("--steps", type=int, default=10, help="denoising steps of the images")
    p.add_argument("--arch", choices=("sd1", "sd2", "sdxl"), default="sd1", help="the toy model's architecture")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
