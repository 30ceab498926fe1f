"""Peak memory of ``alignit-probe record`` does not grow with the number of prompts.

    python benchmarks/bench_memory.py                       # 100 vs 5,000 prompts, toy pipeline, CPU
    python benchmarks/bench_memory.py --large 20000 --batch-size 1000 --drop-padding

Each size runs ``alignit-probe record`` (through ``cli.main``: model loading with its checks, tokenization of every
prompt up front, recording both models, the zarr store, commit) in a fresh Python process, which then reports
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, its peak resident set. Target: the large run's peak within 10% of the
small run's. The toy pipeline (``alignit-probe toy build``) and a Textual Inversion embedding stand in for real
models: what could grow with the prompt count (tokenized prompts, store metadata, queued batches) does not depend
on model size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = [
    "cat",
    "cat sitting",
    "cat sleeping",
    "cat jumping",
    "cat running",
    "cat eating",
    "cat playing",
    "cat hiding",
]
SCENES = [
    "on the beach",
    "in a snowy forest",
    "wearing a red hat",
    "in the style of van gogh",
    "on a wooden table",
    "floating in space",
    "next to a lighthouse at dusk",
    "made of lego bricks",
    "in a busy street at night",
    "under the rain",
]


def prompts(n: int) -> list[str]:
    return [f"a photo of a <new1> {SUBJECTS[i % 8]} {SCENES[(i // 8) % 10]}, picture {i}" for i in range(n)]


def child(args) -> None:
    import resource

    sys.path.insert(0, str(ROOT))
    from alignit_probe import cli

    t = time.perf_counter()
    argv = [
        "record",
        "--baseline",
        args.toy,
        "--custom",
        args.ti,
        "--concept",
        "<new1>",
        "--class-word",
        "cat",
        "--prompts",
        args.prompts_file,
        "--out",
        args.out,
        "--batch-size",
        str(args.batch_size),
        "--store-dtype",
        args.store_dtype,
        "--no-progress",
        "--overwrite",
    ] + (["--drop-padding"] * args.drop_padding)
    rc = cli.main(argv)
    seconds = time.perf_counter() - t
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    print(
        json.dumps(
            {
                "rc": rc,
                "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "seconds": seconds,
                "store_bytes": size,
            }
        )
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--large", type=int, default=5000)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=100,
        help="the same for both runs, at most --small: peak "
        "memory grows with the batch (by design), not with the number of prompts",
    )
    ap.add_argument("--store-dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--drop-padding", action="store_true")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary folder)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("toy", "ti", "prompts-file", "out"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if args.batch_size > args.small:
        ap.error("--batch-size must not exceed --small (both runs must record batches of the same size)")

    sys.path.insert(0, str(ROOT))
    import torch
    from safetensors.torch import save_file

    from alignit_probe.models.toy import build_toy

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_memory-"))
    work.mkdir(parents=True, exist_ok=True)
    toy = build_toy(work / "toy", overwrite=True)
    ti = work / "learned_embeds.safetensors"
    save_file({"<new1>": torch.randn(32, generator=torch.Generator().manual_seed(1))}, str(ti))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")
    runs = {}
    for n in (args.small, args.large):
        pf = work / f"prompts-{n}.txt"
        pf.write_text("\n".join(prompts(n)) + "\n")
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--toy",
            str(toy),
            "--ti",
            str(ti),
            "--prompts-file",
            str(pf),
            "--out",
            str(work / f"store-{n}.zarr"),
            "--batch-size",
            str(args.batch_size),
            "--store-dtype",
            args.store_dtype,
        ] + (["--drop-padding"] if args.drop_padding else [])
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0 or not res.stdout.strip():
            sys.exit(f"run with {n} prompts failed:\n{res.stderr[-3000:]}")
        runs[n] = json.loads(res.stdout.strip().splitlines()[-1])
        if runs[n]["rc"] != 0:
            sys.exit(f"record with {n} prompts exited with {runs[n]['rc']}:\n{res.stderr[-3000:]}")

    import torch as _t

    print(
        f"bench_memory: toy pipeline, cpu, torch={_t.__version__}, batch={args.batch_size} "
        f"store_dtype={args.store_dtype} drop_padding={args.drop_padding}"
    )
    for n, r in runs.items():
        print(
            f"  {n:6d} prompts: peak RSS {r['maxrss_kib'] / 1024:8.1f} MiB   {r['seconds']:7.1f} s   "
            f"store {r['store_bytes'] / 2**20:8.1f} MiB"
        )
    ratio = runs[args.large]["maxrss_kib"] / runs[args.small]["maxrss_kib"]
    print(f"  peak RSS {args.large} / {args.small} prompts = {ratio:.3f}   (target <= 1.10)")
    if args.dir is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
