"""``alignit-probe demo``: the main job on the embedded default, offline — the toy baseline and a toy Custom
Diffusion artifact, recorded, compared, and reported."""

from __future__ import annotations

from pathlib import Path

from .common import subparser

PROMPTS = (
    "photo of a <new1> cat on the beach",
    "a <new1> cat wearing a red hat",
    "a painting of a <new1> cat in the style of van gogh",
)


def cmd_demo(args) -> int:
    from ..models.toy import build_toy, write_toy_custom_diffusion
    from . import main

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / "toy-baseline"
    if not (base / "model_index.json").exists():
        build_toy(base, seed=args.seed, overwrite=True)
    artifact = out / "toy-custom-diffusion"
    if not (artifact / "pytorch_custom_diffusion_weights.safetensors").exists():
        write_toy_custom_diffusion(base, artifact, token="<new1>", init_word="cat", seed=args.seed)
    store = out / "probe.zarr"
    quiet = ["--no-progress"] if args.no_progress else []
    argv = (
        [
            "record",
            "--baseline",
            str(base),
            "--custom",
            str(artifact),
            "--concept",
            "<new1>",
            "--class-word",
            "cat",
            "--out",
            str(store),
            "--overwrite",
            "--alignit",
        ]
        + [x for p in PROMPTS for x in ("--prompt", p)]
        + quiet
    )
    rc = main(argv) or main(["compare", str(store), "--stage", "encoder_output", "key", "value"] + quiet)
    return rc or main(["report", str(store), "--out", str(out / "report"), "--overwrite"])


def add_parser(sub) -> None:
    p = subparser(sub, "demo", "the main job on the embedded toy model (offline)")
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the toy model and artifact")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
