"""AlignIT generation time over plain customized generation (same steps, seed, size), side by side in one run.

Target: ≤ 1.05×. The customized model is a Custom Diffusion model (modifier token + attn2 K/V projections, seeded
random perturbation) of the toy or of SD1.5's shapes with random weights.

    python benchmarks/bench_alignit.py --size toy --steps 20 --repeats 3
    python benchmarks/bench_alignit.py --size sd15 --steps 2 --repeats 2 [--device cuda --dtype float16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from alignit_probe.alignit.engine import alignit, alignit_kv  # noqa: E402
from alignit_probe.alignit.generation import generate_images as _generate  # noqa: E402
from alignit_probe.models.load import load_pair  # noqa: E402
from alignit_probe.models.toy import build_sd15_pipeline, build_toy_pipeline, write_toy_custom_diffusion  # noqa: E402
from alignit_probe.text.concepts import Concept, tokenize_prompts  # noqa: E402
from alignit_probe.text.encoder import encoder_states  # noqa: E402


def make_pair(size: str, device: str, dtype: torch.dtype, tmp: str):
    pipe = build_toy_pipeline(0) if size == "toy" else build_sd15_pipeline(0)
    pipe.save_pretrained(f"{tmp}/base", safe_serialization=True)
    write_toy_custom_diffusion(f"{tmp}/base", f"{tmp}/cd", token="<new1>", init_word="cat")
    return load_pair(f"{tmp}/base", [f"{tmp}/cd"], device=device, dtype=dtype, progress=False)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("toy", "sd15"), default="toy")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--height", type=int, default=None, help="image height (default: the model's, 512 for sd15)")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        pair = make_pair(args.size, args.device, dtype, tmp)
    for p in (pair.baseline, pair.custom):
        p.set_progress_bar_config(disable=True)
    prompt = ["photo of a <new1> cat on the beach"]
    kw = dict(seed=0, steps=args.steps, guidance_scale=7.5, output_type="latent", height=args.height, width=args.width)

    def plain() -> float:
        sync(args.device)
        t = time.perf_counter()
        custom_tp = tokenize_prompts(prompt, pair.custom, pair.baseline.tokenizer, [Concept("<new1>", "cat")])[0]
        _generate(pair.custom, encoder_states(pair.custom, custom_tp), **kw)  # as pipe(prompt=...) would
        sync(args.device)
        return time.perf_counter() - t

    def aligned() -> float:
        sync(args.device)
        t = time.perf_counter()
        akv = alignit_kv(pair, [Concept("<new1>", "cat")], prompt)  # K/V computed once per prompt: counted
        with alignit(pair, akv) as pipe:
            _generate(pipe, akv.cond_embeds, **kw)
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
