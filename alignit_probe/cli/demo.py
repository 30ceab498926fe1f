"""``alignit-probe demo``: everything the toolkit does, offline. By default on the world (``demo_world``): a trained
model whose images are scored exactly, with two shipped customizations. ``--arch sd1|sd2|sdxl`` runs it on the random
toys of those architectures (shapes and formats only: their images are noise) — the toy baseline and a toy Custom
Diffusion artifact: record every stage (with AlignIT), compare, baseline / customized / AlignIT images with their
cross-attention maps, a K/V swap, and one self-contained HTML report. Uses only the public API.

For SDXL the artifact is Custom Diffusion K/V weights and the token as a two-encoder Textual Inversion (SDXL tokens
need vectors for both encoders)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ProbeError
from .common import Steps, Subparsers, save_images, subparser

if TYPE_CHECKING:
    from ..probe import Probe

PROMPTS = (
    "photo of a <new1> cat on the beach",
    "a <new1> cat wearing a red hat",
    "a painting of a <new1> cat in the style of van gogh",
)
SAMPLES = 48  # the world demo's live scores: samples per branch
SWAP = ("a dog on the grass", "a cat in the snow", ["dog"])


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ProbeError(f"output {out} is a file", "choose a folder for --out (it is created if missing)")
    for flag in ("samples", "steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ProbeError(f"--{flag} {getattr(args, flag)} is not positive", f"pass --{flag} 1 or more")
    for flag in ("samples", "alignment"):
        if args.arch != "world" and getattr(args, flag) is not None:
            raise ProbeError(f"--{flag} is for the world demo", f"drop --arch {args.arch}, or drop --{flag}")
    args.samples = args.samples or SAMPLES
    if args.alignment:
        from ..world.shipped import read_rows

        read_rows(args.alignment)  # before any work
    out.mkdir(parents=True, exist_ok=True)
    step = Steps(not args.no_progress)
    if args.arch == "world":
        from .demo_world import run

        return run(args, out, step)
    return toy_demo(args, out, step)


def toy_probe(args: argparse.Namespace, out: Path, progress: bool) -> Probe:
    """The toy baseline of ``--arch`` and its Custom Diffusion artifact (SDXL: plus the token as a two-encoder
    Textual Inversion), written into ``out`` unless already there."""
    from .. import Concept, Probe, build_toy, write_toy_custom_diffusion
    from ..models.toy import write_toy_textual_inversion

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
    return probe


def toy_demo(args: argparse.Namespace, out: Path, step: Steps) -> int:
    from .. import AlignITOptions, compare, open_store
    from ..viz.grid import image_grid
    from ..viz.overlay import write_overlays
    from ..viz.report import report_html, write_html
    from .compare import print_table

    probe = toy_probe(args, out, step.progress)
    prompts, gen = list(PROMPTS), dict(seed=args.seed, steps=args.steps or 10, guidance_scale=7.5)

    step("images and cross-attention maps: baseline / customized / AlignIT")
    maps = probe.attention(prompts, AlignITOptions(), alignit=True, **gen)
    images = {name: imgs for name, (_, imgs) in maps.items()}
    save_images(images, out / "images")
    grid = image_grid(
        images,
        prompts,
        out / "alignit_grid.png",
        caption=f"AlignIT K+V at all layers, alpha 1.0 | seed {args.seed}, {gen['steps']} steps, guidance 7.5",
    )
    akv = probe.alignit_kv(prompts)
    tokenized = {"baseline": akv.baseline, "custom": akv.custom, "alignit": [p.tokens for p in akv.plans]}
    write_overlays(maps, tokenized, prompts, out / "overlays")

    step("record every stage (+ AlignIT branch and the maps) into probe.zarr")
    nodes = {f"{name}/attention": ds for name, (ds, _) in maps.items()}
    store = probe.record(prompts, out / "probe.zarr", alignit=True, overwrite=True, nodes=nodes, command=sys.argv)

    step("K/V swap: keys from A, values from B at 'dog'")
    key_prompt, value_prompt, tokens = SWAP
    swapped = probe.swap(key_prompt, value_prompt, tokens=tokens, **gen)
    swap_grid = image_grid(
        swapped,
        [f"K: {key_prompt} | V: {value_prompt}"],
        out / "swap_grid.png",
        caption=f"values of B written at {', '.join(tokens)} | seed {args.seed}, {gen['steps']} steps",
    )

    step("compare and report")
    frame = compare(store)
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    tree = open_store(store)
    print_table([r for r in rows if r["stage"] in ("encoder_output", "key", "value")], tree)
    page = report_html(tree, rows, title=str(store), images={"AlignIT grid": grid, "K/V swap": swap_grid})
    report = write_html(page, out / "report.html")
    step("done")
    print(f"report: {report.resolve()}")
    return 0


def add_parser(sub: Subparsers) -> None:
    p = subparser(
        sub, "demo", "everything offline on the trained world (or a toy): scores, record, AlignIT, maps, swap, report"
    )
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts and images (toys: also of the model)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the world's 10; toys: 10)")
    p.add_argument(
        "--arch",
        choices=("world", "sd1", "sd2", "sdxl"),
        default="world",
        help="world: the trained world model and its shipped customizations; sd1/sd2/sdxl: random toys",
    )
    p.add_argument("--samples", type=int, default=None, help=f"world: samples per branch scored live ({SAMPLES})")
    p.add_argument(
        "--alignment", metavar="FILE", help="world: a `world eval --json` file shown instead of the shipped table"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
