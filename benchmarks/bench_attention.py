"""Cost of cross-attention map capture: generation time with maps over plain generation, and memory vs steps.

    python benchmarks/bench_attention.py                       # toy pipeline, CPU
    python benchmarks/bench_attention.py --size sd15 --steps 4 --height 256 --width 256   # SD1.5 shapes, random
    python benchmarks/bench_attention.py --size sd15 --device cuda --dtype float16
    python benchmarks/bench_attention.py --size sdxl --device cuda --dtype float16 --steps 20   # 1024x1024

Time: the same pipeline call (steps, seed, size, guidance) without and with ``capture_attention``, alternated,
median of ``--repeats``, after one warm-up of each. Targets: ratio ≤ 1.3×.
Memory at ``--mem-steps`` (default 5 and 50): the collector's accumulator bytes (exact), tracemalloc's peak of
Python allocations (torch's CPU tensors are not traced), the process's peak RSS during the call (Linux VmHWM,
reset through /proc/self/clear_refs where the kernel allows it) and, on CUDA, torch.cuda.max_memory_allocated.
Target: flat in steps. ``sd15``: SD1.5's UNet and CLIP-L text-encoder configs with random weights; ``sdxl``:
SDXL-base-1.0's UNet (70 attn2 layers) and both text encoders, random weights, built on the device, 1024×1024 by
default (the prompt's encoder states and pooled embedding from ``encode_prompt``). Their VAE is a tiny stand-in and
is not run (``output_type="latent"``). ``sdxl-skeleton``: SDXL's topology at tiny widths (``skeleton.py``, 256×256
by default): the per-call overhead of capture at SDXL's 70 sites, measurable on a CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from alignit_probe.capture.attention import AttentionSlices, capture_attention  # noqa: E402
from alignit_probe.capture.sites import attn2_paths  # noqa: E402
from alignit_probe.models.pipes import is_xl  # noqa: E402
from alignit_probe.models.toy import build_sd15_pipeline, build_sdxl_shapes_pipeline, build_toy_pipeline  # noqa: E402
from benchmarks.skeleton import build_sdxl_skeleton_pipeline  # noqa: E402

PROMPT = "a photo of a xylophonist dog on the beach"


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:.2f} MiB"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["toy", "sd15", "sdxl", "sdxl-skeleton"], default="toy")
    ap.add_argument("--steps", type=int, default=None, help="steps of the timed runs (toy 20, sd15 and sdxl 4)")
    ap.add_argument("--mem-steps", default="5,50", help="step counts compared for memory")
    ap.add_argument("--height", type=int, default=None, help="image height (default: the model's: sdxl 1024)")
    ap.add_argument("--width", type=int, default=None, help="image width (default: the model's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU: steadier timings)")
    ap.add_argument(
        "--slices",
        choices=["global", "all"],
        default="global",
        help="global: DAAM's map only; all: per layer, per head, 2 step windows, native",
    )
    args = ap.parse_args(argv)

    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    toy = args.size == "toy"
    steps = args.steps or (20 if toy else 4)
    dtype = getattr(torch, args.dtype or ("float16" if args.device.startswith("cuda") else "float32"))
    if args.size == "sdxl":  # 2.6 B parameters: initialized on the device
        pipe = build_sdxl_shapes_pipeline(args.seed, args.device, dtype)
    elif args.size == "sdxl-skeleton":  # SDXL's topology at tiny widths (skeleton.py): per-call overhead
        pipe = build_sdxl_skeleton_pipeline(args.seed, args.device, dtype)
    else:
        pipe = (build_toy_pipeline if toy else build_sd15_pipeline)(args.seed)
        if args.device != "cpu" or dtype != torch.float32:
            pipe = pipe.to(args.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    height = args.height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = args.width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    output_type = "np" if toy else "latent"
    extra = {}
    if is_xl(pipe):  # both encoders' penultimate states and the pooled embedding, as pipe(prompt=...) computes them
        with torch.no_grad():
            pe, _, pooled, _ = pipe.encode_prompt(PROMPT, device=args.device, do_classifier_free_guidance=False)
        extra["pooled_prompt_embeds"] = pooled
    else:
        ids = pipe.tokenizer([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            pe = pipe.text_encoder(ids.to(args.device))[0]
    slices = (
        AttentionSlices()
        if args.slices == "global"
        else AttentionSlices(per_layer=True, per_head=True, step_windows=[(0, 1), (1, 10**6)], native=True)
    )
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def generate(n_steps: int, maps: bool):
        kw = dict(
            prompt_embeds=pe,
            num_inference_steps=n_steps,
            guidance_scale=args.guidance,
            height=height,
            width=width,
            output_type=output_type,
            generator=torch.Generator(args.device).manual_seed(args.seed),
            **extra,
        )
        if not maps:
            return pipe(**kw), None
        with capture_attention(pipe, pe, slices=slices) as col:
            out = pipe(**kw)
        return out, col

    def timed(maps: bool) -> float:
        sync()
        t0 = time.perf_counter()
        generate(steps, maps)
        sync()
        return time.perf_counter() - t0

    timed(False), timed(True)  # warm-up
    plain, with_maps = [], []
    for _ in range(args.repeats):
        plain.append(timed(False))
        with_maps.append(timed(True))
    tp, tm = statistics.median(plain), statistics.median(with_maps)

    mem = {}
    for n in [int(s) for s in args.mem_steps.split(",")]:
        row = {}
        for maps in (False, True):
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            resettable = reset_peak_rss()
            rss0 = peak_rss()
            tracemalloc.start()
            _, col = generate(n, maps)
            _, py_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rss = peak_rss()
            row[maps] = dict(
                acc=col.accumulator_bytes() if col else 0,
                acc_n=len(col.accumulators()) if col else 0,
                steps=col.steps if col else n,
                py=py_peak,
                rss=(rss - rss0) if resettable and rss is not None else None,
                cuda=torch.cuda.max_memory_allocated() if cuda else None,
            )
        mem[n] = row

    layers = len(attn2_paths(pipe.unet))
    print(
        f"bench_attention: size={args.size} device={args.device} ({torch.cuda.get_device_name() if cuda else 'cpu'}) "
        f"dtype={str(dtype).removeprefix('torch.')} image={height}x{width} latent={height // pipe.vae_scale_factor}x"
        f"{width // pipe.vae_scale_factor} guidance={args.guidance} attn2_layers={layers} slices={args.slices} "
        f"torch={torch.__version__} threads={torch.get_num_threads()}"
    )
    print(f"time, {steps} steps, median of {args.repeats} (output_type={output_type}):")
    print(f"  plain      {tp * 1000:9.1f} ms   runs: {' '.join(f'{t * 1000:.0f}' for t in plain)}")
    print(f"  with maps  {tm * 1000:9.1f} ms   runs: {' '.join(f'{t * 1000:.0f}' for t in with_maps)}")
    print(
        f"  ratio      {tm / tp:9.3f} x   (target <= 1.3x); "
        f"ratio of the fastest runs {min(with_maps) / min(plain):.3f} x"
    )
    ns = list(mem)
    print("memory:" + "".join(f"{f'{n} steps':>36}" for n in ns))
    print("  " + f"{'':30}" + "".join(f"{'plain':>16}{'with maps':>20}" for _ in ns))
    rows = [("accumulators (exact)", "acc"), ("tracemalloc peak (python)", "py"), ("peak RSS increase", "rss")]
    if cuda:
        rows.append(("cuda max_memory_allocated", "cuda"))
    for label, key in rows:
        cells = "".join(
            f"{mib(mem[n][False][key] if key != 'acc' else None):>16}{mib(mem[n][True][key]):>20}" for n in ns
        )
        print(f"  {label:30}{cells}")
    a = [mem[n][True]["acc"] for n in ns]
    print(
        f"  accumulator tensors: {[mem[n][True]['acc_n'] for n in ns]}, steps captured: "
        f"{[mem[n][True]['steps'] for n in ns]}; flat in steps: {'yes' if len(set(a)) == 1 else 'NO'}"
    )


if __name__ == "__main__":
    main()
