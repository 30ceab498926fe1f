"""Tensor operations the toolkit adds to a generation: counted, not timed (the same on every machine and load).

Where a UNet step runs eagerly on a GPU, the host launches every tensor operation one by one (~10 µs each, whatever
its size); at SDXL's sizes on an H100/H200 the host is what a step waits for, so the operations an intervention adds
per step decide its overhead there. This counts, with a ``TorchDispatchMode``, the ATen operations of one
generation at SDXL's topology (``skeleton.py``: 70 attn2 sites; or the toy) and of the same generation with
attention maps captured and with AlignIT (its K/V precompute counted apart), with classifier-free guidance.

    python benchmarks/bench_ops.py                      # sdxl-skeleton, 4 steps
    python benchmarks/bench_ops.py --size toy --steps 2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from alignit_probe.alignit.engine import alignit, alignit_kv  # noqa: E402
from alignit_probe.alignit.generation import generate_images  # noqa: E402
from alignit_probe.capture.attention import capture_attention  # noqa: E402
from alignit_probe.capture.sites import attn2_paths  # noqa: E402
from alignit_probe.models.encoder import conditioning  # noqa: E402
from alignit_probe.models.toy import build_toy_pipeline  # noqa: E402
from alignit_probe.text.concepts import Concept, tokenize_prompts  # noqa: E402
from benchmarks.op_count import OpCount  # noqa: E402
from benchmarks.skeleton import build_sdxl_skeleton_pipeline  # noqa: E402
from benchmarks.ti_pair import ti_pair  # noqa: E402


def counted(fn) -> int:
    with torch.no_grad(), OpCount() as c:
        fn()
    return c.n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("sdxl-skeleton", "toy"), default="sdxl-skeleton")
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args(argv)
    base = build_sdxl_skeleton_pipeline(0) if args.size == "sdxl-skeleton" else build_toy_pipeline(0)
    pair = ti_pair(base, args.size)
    concepts, prompt = [Concept("<new1>", "cat")], ["photo of a <new1> cat on the beach"]
    size = 256 if args.size == "sdxl-skeleton" else None
    kw = dict(seed=0, guidance_scale=7.5, output_type="latent", height=size, width=size, progress=False)
    tokenized = tokenize_prompts(prompt, pair.custom, pair.baseline.tokenizer, concepts)[0]
    c, pooled = conditioning(pair.custom, tokenized)

    def plain(steps: int) -> None:
        generate_images(pair.custom, c, pooled_prompt_embeds=pooled, steps=steps, **kw)

    def maps(steps: int) -> None:
        with capture_attention(pair.custom, c):
            generate_images(pair.custom, c, pooled_prompt_embeds=pooled, steps=steps, **kw)

    akv = alignit_kv(pair, concepts, prompt)

    def aligned(steps: int) -> None:
        with alignit(pair, akv) as pipe:
            generate_images(pipe, akv.cond_embeds, pooled_prompt_embeds=akv.cond_pooled, steps=steps, **kw)

    def per_step(fn) -> tuple[float, int]:  # (operations per step, operations outside the steps)
        one, more = counted(lambda: fn(1)), counted(lambda: fn(1 + args.steps))
        return (more - one) / args.steps, one - (more - one) // args.steps

    sites = len(attn2_paths(pair.custom.unet))
    p_step, p_fixed = per_step(plain)
    print(f"bench_ops: size={args.size} attn2_sites={sites} steps={args.steps} torch={torch.__version__}")
    print(f"  plain generation          {p_step:8.0f} operations per step ({p_fixed} outside the steps)")
    for name, fn in (("attention maps", maps), ("AlignIT", aligned)):
        step, fixed = per_step(fn)
        print(
            f"  {name:<25} {step - p_step:+8.0f} per step ({(step - p_step) / sites:+.1f} per attn2 call, "
            f"{step / p_step:.3f}x the plain step), {fixed - p_fixed:+d} outside the steps"
        )
    encode = counted(
        lambda: conditioning(pair.custom, tokenize_prompts(prompt, pair.custom, pair.baseline.tokenizer, concepts)[0])
    )
    precompute = counted(lambda: alignit_kv(pair, concepts, prompt))
    print(
        f"  AlignIT K/V precompute    {precompute:8d} operations (encoding the prompt for plain generation: {encode})"
    )


if __name__ == "__main__":
    main()
