"""AlignIT generation time over plain customized generation (same steps, seed, size), side by side in one run.

Target: ≤ 1.05×. The customized model is a Custom Diffusion model (modifier token + attn2 K/V projections, seeded
random perturbation) of the toy or of SD1.5's shapes with random weights; at SDXL-base-1.0's shapes (``--size
sdxl``, built on the device, 1024×1024 by default) a Textual Inversion token ``<new1>`` in both text encoders
(``ti_pair.py``), so plain generation runs the UNet's own processors and AlignIT its K/V injection.
``--size sdxl-skeleton``: the same at SDXL's topology with tiny widths (``skeleton.py``; 256×256 by default): the
per-layer, per-site and per-step overhead that decides the ratio on a GPU, measurable on a CPU.

    python benchmarks/bench_alignit.py --size toy --steps 20 --repeats 3
    python benchmarks/bench_alignit.py --size sd15 --steps 2 --repeats 2 [--device cuda --dtype float16]
    python benchmarks/bench_alignit.py --size sdxl --steps 20 --repeats 3 --device cuda --dtype float16
    python benchmarks/bench_alignit.py --size sdxl-skeleton --steps 20 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package and benchmarks.ti_pair
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from alignit_probe.alignit.engine import alignit, alignit_kv  # noqa: E402
from alignit_probe.alignit.generation import generate_images as _generate  # noqa: E402
from alignit_probe.models.encoder import conditioning  # noqa: E402
from alignit_probe.models.load import ModelPair, load_pair  # noqa: E402
from alignit_probe.models.toy import (  # noqa: E402
    build_sd15_pipeline,
    build_sdxl_shapes_pipeline,
    build_toy_pipeline,
    write_toy_custom_diffusion,
)
from alignit_probe.text.concepts import Concept, tokenize_prompts  # noqa: E402
from benchmarks.skeleton import build_sdxl_skeleton_pipeline  # noqa: E402
from benchmarks.ti_pair import ti_pair  # noqa: E402


def make_pair(size: str, device: str, dtype: torch.dtype, tmp: str) -> ModelPair:
    if size == "sdxl-skeleton":
        return ti_pair(build_sdxl_skeleton_pipeline(0, device, dtype), "sdxl-skeleton")
    if size == "sdxl":  # 2.6 B parameters: built on the device, never through the disk
        return ti_pair(build_sdxl_shapes_pipeline(0, device, dtype), "sdxl-random")
    pipe = build_toy_pipeline(0) if size == "toy" else build_sd15_pipeline(0)
    pipe.save_pretrained(f"{tmp}/base", safe_serialization=True)
    write_toy_custom_diffusion(f"{tmp}/base", f"{tmp}/cd", token="<new1>", init_word="cat")
    return load_pair(f"{tmp}/base", [f"{tmp}/cd"], device=device, dtype=dtype, progress=False)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("toy", "sd15", "sdxl", "sdxl-skeleton"), default="toy")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--height", type=int, default=None, help="image height (default: the model's: sd15 512, sdxl 1024)")
    ap.add_argument("--width", type=int, default=None, help="image width (default: the model's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        pair = make_pair(args.size, args.device, dtype, tmp)
    for p in (pair.baseline, pair.custom):
        p.set_progress_bar_config(disable=True)
    prompt = ["photo of a <new1> cat on the beach"]
    if args.size == "sdxl-skeleton":
        args.height, args.width = args.height or 256, args.width or 256
    kw = dict(seed=0, steps=args.steps, guidance_scale=7.5, output_type="latent", height=args.height, width=args.width)
    kw["progress"] = False  # generate_images turns the pipeline's progress bar on by default

    def plain() -> float:
        sync(args.device)
        t = time.perf_counter()
        custom_tp = tokenize_prompts(prompt, pair.custom, pair.baseline.tokenizer, [Concept("<new1>", "cat")])[0]
        c, pooled = conditioning(pair.custom, custom_tp)  # as pipe(prompt=...) would (SDXL: and pooled)
        _generate(pair.custom, c, pooled_prompt_embeds=pooled, **kw)
        sync(args.device)
        return time.perf_counter() - t

    def aligned() -> float:
        sync(args.device)
        t = time.perf_counter()
        akv = alignit_kv(pair, [Concept("<new1>", "cat")], prompt)  # K/V computed once per prompt: counted
        with alignit(pair, akv) as pipe:
            _generate(pipe, akv.cond_embeds, pooled_prompt_embeds=akv.cond_pooled, **kw)
        sync(args.device)
        return time.perf_counter() - t

    plain(), aligned()  # warm-up
    times = {"plain": [], "alignit": []}
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        times["plain"].append(plain())
        times["alignit"].append(aligned())
    best = {k: min(v) for k, v in times.items()}
    print(
        f"size={args.size} device={args.device} dtype={args.dtype} steps={args.steps} repeats={args.repeats} "
        f"image={args.height or 'default'}x{args.width or 'default'} threads={torch.get_num_threads()}"
    )
    print(f"plain customized generation: {best['plain']:.3f} s (best of {args.repeats})")
    print(f"AlignIT generation:          {best['alignit']:.3f} s (best of {args.repeats}, incl. K/V precompute)")
    print(f"ratio AlignIT / plain: {best['alignit'] / best['plain']:.3f}x (target <= 1.05x)")


if __name__ == "__main__":
    main()
