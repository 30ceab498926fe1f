"""Cost of recording every text-encoding stage to a zarr store, against the compute floor and against catching K/V
with hooks inside a UNet denoising step. SD1.5 or SDXL-base shapes, random weights.

    python benchmarks/bench_record.py                                  # CPU, float32
    python benchmarks/bench_record.py --device cuda --dtype float16 --prompts 256 --batch-size 32
    python benchmarks/bench_record.py --size sdxl --device cuda --dtype float16 --prompts 32 --batch-size 16

Measured side by side in one run, all per prompt and per model (the store holds baseline and customized model):

* floor: the text encoder(s) and every attn2 K/V projection of both models on pre-tokenized prompts, batch by
  batch, nothing kept (the least any recorder must compute; SDXL: both encoders with their hidden states, the
  penultimate ones concatenated into the UNet's encoder states as ``encode_prompt`` does, the second one's pooled
  output, then K/V);
* record: ``probe.record_store`` end to end (tokenization and role alignment, every stage of both models, the zarr
  store written, embedding diagnostics, commit) — target ≤ 1.2× the floor;
* naive: one UNet forward at the model's latent size (``--height``/``--width``: SD1.5 64×64, SDXL 128×128) per
  prompt batch with forward hooks on every attn2 ``to_k``/``to_v`` copying K/V to the host (plus the text
  encoders; SDXL's UNet also gets the pooled embedding and the six size/crop time ids) — record must be ≥ 35× faster;
* summary (``--summary``): ``record_store`` with ``RecordOptions(summary=True)`` end to end (every stage of both
  models computed, the per-token distances of the customized model to the baseline computed on the device and
  written instead of the activations) — target ≤ 1.5× the floor. Its runs alternate with the floor's too;
* I/O floor: the bytes of the last recording written as plain files of the same sizes to the same filesystem; the
  recording's share of its speed is the GPU target (≥ 80%), where the compute floor is far below it;
* writer alone (``--writer``): the same batches computed first and kept on the host, then written by the store
  writer (``writer_alone.py``), alternated with the I/O floor: whether the writer keeps pace with the disk, on any
  machine (on a CPU the recording is bounded by the compute); ``--writer-only``: that alone.

Floor and record (and summary) runs alternate (after one warm-up of each); ms/prompt are medians, record/floor is the
median of the ratios of adjacent runs (on a shared machine, load comes and goes between runs).

``--size sd15``: ``UNet2DConditionModel()``'s default config (320/640/1280/1280 channels, cross-attention 768, 16
attn2 sites), CLIP ViT-L/14's text encoder (768 wide, 12 layers, 12 heads) with the real CLIP tokenizer.
``--size sdxl``: SDXL-base-1.0's UNet (2.6 B parameters, 70 attn2 sites, cross-attention 2048) and text encoders
(CLIP ViT-L/14 and OpenCLIP bigG: 1280 wide, 32 layers), built on the device (``build_sdxl_shapes_pipeline``).
``--size sdxl-skeleton``: SDXL's topology at tiny widths (``skeleton.py``): the per-run, per-batch and per-site costs
of recording at SDXL's counts of layers and sites, with almost no arithmetic or bytes.
The customized model shares the UNet and carries a Textual Inversion token ``<new1>`` in its own copy of the text
encoder(s) (``ti_pair.py``: SDXL's in both).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package and benchmarks.ti_pair
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from alignit_probe.capture.sites import attn2_paths, record_kv  # noqa: E402
from alignit_probe.models.load import ModelPair  # noqa: E402
from alignit_probe.models.pipes import is_xl  # noqa: E402
from alignit_probe.models.toy import build_sd15_pipeline, build_sdxl_shapes_pipeline  # noqa: E402
from alignit_probe.record.run import RecordOptions, record_store  # noqa: E402
from alignit_probe.text.concepts import Concept  # noqa: E402
from benchmarks.record_breakdown import breakdown, copy_speeds  # noqa: E402
from benchmarks.skeleton import build_sdxl_skeleton_pipeline  # noqa: E402
from benchmarks.ti_pair import ti_pair  # noqa: E402
from benchmarks.writer_alone import host_batches, report_writer_alone  # noqa: E402

SUBJECTS = ["cat", "dog", "teapot", "backpack", "robot", "castle", "bicycle", "owl"]
SCENES = [
    "on the beach",
    "in a snowy forest",
    "wearing a red hat",
    "in the style of van gogh",
    "on a wooden table",
    "floating in space",
    "next to a lighthouse at dusk",
    "made of lego bricks",
]


def prompts(n: int) -> list[str]:
    return [
        f"a photo of a <new1> {SUBJECTS[i % 8]} {SCENES[(i // 8) % 8]}" + (f", shot {i}" if i >= 64 else "")
        for i in range(n)
    ]


def build_pair(size: str, device: str, dtype: torch.dtype) -> ModelPair:
    """The baseline of ``size``'s shapes on ``device``/``dtype`` and its Textual Inversion customization."""
    if size == "sdxl-skeleton":
        return ti_pair(build_sdxl_skeleton_pipeline(0, device, dtype), "sdxl-skeleton")
    if size == "sdxl":
        return ti_pair(build_sdxl_shapes_pipeline(0, device, dtype), "sdxl-random")
    return ti_pair(build_sd15_pipeline(0).to(device, dtype), "sd15-random")


def encode(pipe: StableDiffusionPipeline, ids: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(encoder states c, pooled embedding or None) of pre-tokenized prompts (one id tensor per tokenizer), as the
    pipeline's ``encode_prompt`` computes them."""
    if not is_xl(pipe):
        return pipe.text_encoder(ids[0])[0], None
    states = []
    for te, i in zip((pipe.text_encoder, pipe.text_encoder_2), ids):
        out = te(i, output_hidden_states=True)
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), out[0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--size", choices=("sd15", "sdxl", "sdxl-skeleton"), default="sd15", help="the models' shapes (random weights)"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default=None,
        help="model dtype (default: float16 on cuda, float32 on cpu)",
    )
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--store-dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--repeats", type=int, default=6, help="floor/record runs, alternated; medians reported")
    ap.add_argument("--naive-batch", type=int, default=2, help="prompts per hooked UNet forward")
    ap.add_argument("--height", type=int, default=None, help="naive's image height (default: sd15 512, sdxl 1024)")
    ap.add_argument("--width", type=int, default=None, help="naive's image width (default: sd15 512, sdxl 1024)")
    ap.add_argument("--out", default=None, help="folder for the stores (default: a temporary folder)")
    ap.add_argument(
        "--summary", action="store_true", help="also time record --summary (distances on the device), alternated"
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="then one more record run, profiled: where its time goes (and on CUDA the host-copy speeds)",
    )
    ap.add_argument(
        "--writer",
        action="store_true",
        help="then the store writer alone (batches computed first), alternated with the I/O floor",
    )
    ap.add_argument(
        "--writer-only",
        action="store_true",
        help="only the store writer alone against the I/O floor (no floor, record or naive runs)",
    )
    args = ap.parse_args(argv)

    dtype = getattr(torch, args.dtype or ("float16" if args.device.startswith("cuda") else "float32"))
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    pair = build_pair(args.size, args.device, dtype)
    build_s = time.perf_counter() - t0
    texts = prompts(args.prompts)
    concepts = [Concept("<new1>", None)]
    base_texts = [t.replace("<new1> ", "") for t in texts]

    def ids_of(pipe, batch) -> tuple[torch.Tensor, ...]:
        """Ids of ``batch`` for each of the pipeline's tokenizers (SDXL's second one pads with "!")."""
        tokenizers = (pipe.tokenizer, pipe.tokenizer_2) if is_xl(pipe) else (pipe.tokenizer,)
        return tuple(
            tok(batch, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.to(
                args.device
            )
            for tok in tokenizers
        )

    batches = {
        m: [ids_of(getattr(pair, m), tx[i : i + args.batch_size]) for i in range(0, len(tx), args.batch_size)]
        for m, tx in (
            ("baseline", base_texts),
            ("custom", [pair.custom.maybe_convert_prompt(t, pair.custom.tokenizer) for t in texts]),
        )
    }

    def floor() -> float:
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            for m in ("baseline", "custom"):
                pipe = getattr(pair, m)
                for ids in batches[m]:
                    c, _pooled = encode(pipe, ids)
                    record_kv(pipe.unet, c)
        sync()
        return time.perf_counter() - t

    tmp = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_record-"))
    if not args.out:
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # also when a run fails or is interrupted
    sizes, summary_sizes, file_sizes = [], [], []

    def record(k: int, summary: bool = False) -> float:
        options = RecordOptions(batch_size=args.batch_size, store_dtype=args.store_dtype, summary=summary)
        sync()
        t = time.perf_counter()
        out = record_store(
            pair,
            concepts,
            texts,
            tmp / f"{'summary' if summary else 'store'}{k}.zarr",
            options,
            overwrite=True,
            progress=False,
        )
        sync()
        seconds = time.perf_counter() - t
        files = [f.stat().st_size for f in out.rglob("*") if f.is_file()]
        (summary_sizes if summary else sizes).append(sum(files))
        if not summary:
            file_sizes[:] = files
        shutil.rmtree(out)  # every run starts from the same disk and page-cache state
        return seconds

    def io_floor(k: int, sizes: list[int] | None = None) -> float:
        """The I/O floor: the bytes the last full recording wrote (or files of ``sizes``), in files of the same
        sizes, written as plain files to the same filesystem (no compute, no zarr, no metadata), then removed like
        the stores."""
        sizes = file_sizes if sizes is None else sizes
        folder = tmp / f"io{k}"
        folder.mkdir()
        payload = memoryview(bytes(max(sizes)))
        t = time.perf_counter()
        for i, n in enumerate(sizes):
            with open(folder / f"f{i}", "wb") as fh:
                fh.write(payload[:n])
        seconds = time.perf_counter() - t
        shutil.rmtree(folder)
        return seconds

    unet_config, scale = pair.custom.unet.config, pair.custom.vae_scale_factor
    height = args.height or unet_config.sample_size * scale
    width = args.width or unet_config.sample_size * scale
    latent_hw = (height // scale, width // scale)

    def naive() -> float:
        """Hooked UNet forward(s) at the latent size for one prompt batch: K/V of every attn2 copied to the host."""
        pipe = pair.custom
        ids = ids_of(pipe, [pipe.maybe_convert_prompt(t, pipe.tokenizer) for t in texts[: args.naive_batch]])
        caught, handles = [], []
        for name, mod in pipe.unet.named_modules():
            if name.endswith("attn2"):
                for proj in (mod.to_k, mod.to_v):
                    handles.append(proj.register_forward_hook(lambda _m, _i, out: caught.append(out.cpu())))
        n = len(ids[0])
        latents = torch.randn(n, 4, *latent_hw, generator=torch.Generator().manual_seed(0)).to(args.device, dtype)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]] * n, device=args.device, dtype=dtype)
        try:
            sync()
            t = time.perf_counter()
            with torch.no_grad():
                c, pooled = encode(pipe, ids)
                added = None if pooled is None else {"text_embeds": pooled, "time_ids": time_ids}
                pipe.unet(
                    latents, torch.tensor(500, device=args.device), encoder_hidden_states=c, added_cond_kwargs=added
                )
            sync()
            return time.perf_counter() - t
        finally:
            for h in handles:
                h.remove()

    if args.writer_only:
        print(
            f"bench_record --writer-only: size={args.size} device={args.device} "
            f"dtype={str(dtype).removeprefix('torch.')} store_dtype={args.store_dtype} prompts={args.prompts} "
            f"batch={args.batch_size} (models built in {build_s:.0f} s)"
        )
        batches = host_batches(pair, concepts, texts, args.batch_size, args.store_dtype)
        report_writer_alone(batches, tmp, args.batch_size, args.prompts, args.repeats, io_floor)
        return
    floor(), record(-1)  # warm-up (allocator, lazy imports, first zarr write)
    if args.summary:
        record(-1, summary=True)
    floors, records, summaries, ios = [], [], [], []
    for k in range(args.repeats):
        floors.append(floor())
        records.append(record(k))
        ios.append(io_floor(k))
        if args.summary:
            summaries.append(record(k, summary=True))
    naive_s = naive()

    per = 2 * args.prompts  # prompt x model
    f_ms = statistics.median(floors) / per * 1e3
    r_ms = statistics.median(records) / per * 1e3
    n_ms = naive_s / args.naive_batch * 1e3
    ratio = statistics.median(r / f for r, f in zip(records, floors))  # adjacent runs: robust to machine load
    size = sizes[-1]
    print(
        f"bench_record: size={args.size} device={args.device} ({torch.cuda.get_device_name() if cuda else 'cpu'}) "
        f"dtype={str(dtype).removeprefix('torch.')} store_dtype={args.store_dtype} prompts={args.prompts} "
        f"batch={args.batch_size} attn2_layers={len(attn2_paths(pair.custom.unet))} "
        f"threads={torch.get_num_threads()} torch={torch.__version__} "
        f"(models built in {build_s:.0f} s)"
    )
    print(f"  store: {size / 2**20:.1f} MiB on disk, {size / per / 2**20:.2f} MiB per prompt and model")
    print(
        f"  floor  (text encoder(s) + attn2 K/V, nothing kept) {f_ms:6.1f} ms/prompt   runs (s): "
        f"{' '.join(f'{t:.2f}' for t in floors)}"
    )
    print(
        f"  record (record_store to zarr, all stages)       {r_ms:9.1f} ms/prompt   runs (s): "
        f"{' '.join(f'{t:.2f}' for t in records)}"
    )
    hw = f"{latent_hw[0]}x{latent_hw[1]}"
    print(f"  naive  (hooked UNet step, {hw}, batch {args.naive_batch}){'':>{13 - len(hw)}}{n_ms:9.1f} ms/prompt")
    print(
        f"  record / floor = {ratio:.3f}x   (median of the {args.repeats} adjacent pairs; target <= 1.2x; "
        f"fastest record / fastest floor {min(records) / min(floors):.3f}x)"
    )
    print(f"  naive / record = {n_ms / r_ms:.1f}x   (target >= 35x)")
    io_ms = statistics.median(ios) / per * 1e3
    io_share = statistics.median(i / r for i, r in zip(ios, records))
    print(
        f"  io floor (same bytes, {len(file_sizes)} plain files, same filesystem) {io_ms:7.1f} ms/prompt "
        f"({size / statistics.median(ios) / 2**30:.2f} GiB/s)   runs (s): {' '.join(f'{t:.2f}' for t in ios)}"
    )
    print(
        f"  record reaches {100 * io_share:.0f}% of the I/O floor's speed (io floor / record, median of adjacent "
        f"pairs; target on a GPU >= 80%; on a CPU the compute floor bounds it)"
    )
    if args.summary:
        s_ms = statistics.median(summaries) / per * 1e3
        s_ratio = statistics.median(s / f for s, f in zip(summaries, floors))
        s_size = summary_sizes[-1]
        print(
            f"  summary store: {s_size / 2**20:.2f} MiB on disk, {s_size / per / 2**10:.1f} KiB per prompt and model "
            f"({size / s_size:.0f}x smaller)"
        )
        print(
            f"  summary (record_store --summary to zarr)       {s_ms:9.1f} ms/prompt   runs (s): "
            f"{' '.join(f'{t:.2f}' for t in summaries)}"
        )
        print(
            f"  summary / floor = {s_ratio:.3f}x   (median of the {args.repeats} adjacent pairs; target <= 1.5x; "
            f"fastest summary / fastest floor {min(summaries) / min(floors):.3f}x)"
        )
    if args.writer:
        batches = host_batches(pair, concepts, texts, args.batch_size, args.store_dtype)
        report_writer_alone(batches, tmp, args.batch_size, args.prompts, args.repeats, io_floor)
        del batches
    if args.breakdown:
        breakdown(lambda: record(-2), per)
        copy_speeds(args.device)


if __name__ == "__main__":
    main()
