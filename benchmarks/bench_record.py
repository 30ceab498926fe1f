"""Cost of recording every text-encoding stage to a zarr store, against the compute floor and against catching K/V
with hooks inside a UNet denoising step. SD1.5 shapes, random weights.

    python benchmarks/bench_record.py                                  # CPU, float32
    python benchmarks/bench_record.py --device cuda --dtype float16 --prompts 256 --batch-size 32

Measured side by side in one run, all per prompt and per model (the store holds baseline and customized model):

* floor: the text encoder and every attn2 K/V projection of both models on pre-tokenized prompts, batch by batch,
  nothing kept (the least any recorder must compute);
* record: ``probe.record_store`` end to end (tokenization and role alignment, every stage of both models, the zarr
  store written, embedding diagnostics, commit) — target ≤ 1.2× the floor;
* naive: one UNet forward at 64×64 latents per prompt batch with forward hooks on every attn2 ``to_k``/``to_v``
  copying K/V to the host (plus the text encoder) — record must be ≥ 35× faster;
* summary (``--summary``): ``record_store`` with ``RecordOptions(summary=True)`` end to end (every stage of both
  models computed, the per-token distances of the customized model to the baseline computed on the device and
  written instead of the activations) — target ≤ 1.5× the floor. Its runs alternate with the floor's too.

Floor and record (and summary) runs alternate (after one warm-up of each); ms/prompt are medians, record/floor is the
median of the ratios of adjacent runs (on a shared machine, load comes and goes between runs).

SD1.5: ``UNet2DConditionModel()``'s default config (320/640/1280/1280 channels, cross-attention 768, 16 attn2
sites), CLIP ViT-L/14's text encoder (768 wide, 12 layers, 12 heads) with the real CLIP tokenizer; the customized
model shares the UNet and carries a Textual Inversion token ``<new1>`` in its own copy of the text encoder.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from alignit_probe.capture.sites import record_kv  # noqa: E402
from alignit_probe.models.load import ModelPair  # noqa: E402
from alignit_probe.models.toy import clip_tokenizer  # noqa: E402
from alignit_probe.record.run import RecordOptions, record_store  # noqa: E402
from alignit_probe.text.concepts import Concept  # noqa: E402

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


def build_sd15(seed: int = 0):
    """SD1.5-shaped pipeline with random weights (tiny VAE, never run)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from alignit_probe.models.toy import SCHEDULER_CONFIG

    torch.manual_seed(seed)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    ).eval()
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval()
    vae = AutoencoderKL(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        norm_num_groups=8,
        layers_per_block=1,
    ).eval()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_pair(device: str, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    base = build_sd15().to(device, dtype)
    base.set_progress_bar_config(disable=True)
    parts = dict(
        base.components, text_encoder=copy.deepcopy(base.text_encoder), tokenizer=copy.deepcopy(base.tokenizer)
    )
    custom = StableDiffusionPipeline(**parts)
    custom.load_textual_inversion(
        {"<new1>": torch.randn(768, generator=torch.Generator().manual_seed(1))}, token="<new1>"
    )
    custom.text_encoder.to(device, dtype)
    return ModelPair(
        baseline=base,
        custom=custom,
        baseline_id="sd15-random",
        custom_ids=["ti-random"],
        method="textual_inversion",
        artifacts=[],
        warnings=[],
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    ap.add_argument("--out", default=None, help="folder for the stores (default: a temporary folder)")
    ap.add_argument(
        "--summary", action="store_true", help="also time record --summary (distances on the device), alternated"
    )
    args = ap.parse_args(argv)

    dtype = getattr(torch, args.dtype or ("float16" if args.device.startswith("cuda") else "float32"))
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    pair = build_pair(args.device, dtype)
    build_s = time.perf_counter() - t0
    texts = prompts(args.prompts)
    concepts = [Concept("<new1>", None)]
    base_texts = [t.replace("<new1> ", "") for t in texts]

    def ids_of(pipe, batch):
        return pipe.tokenizer(
            batch, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids.to(args.device)

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
                    c = pipe.text_encoder(ids)[0]
                    record_kv(pipe.unet, c)
        sync()
        return time.perf_counter() - t

    tmp = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_record-"))
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

    def io_floor(k: int) -> float:
        """The I/O floor: the bytes the last full recording wrote, in files of the same sizes, written as plain files
        to the same filesystem (no compute, no zarr, no metadata), then removed like the stores."""
        folder = tmp / f"io{k}"
        folder.mkdir()
        payload = memoryview(bytes(max(file_sizes)))
        t = time.perf_counter()
        for i, n in enumerate(file_sizes):
            with open(folder / f"f{i}", "wb") as fh:
                fh.write(payload[:n])
        seconds = time.perf_counter() - t
        shutil.rmtree(folder)
        return seconds

    def naive() -> float:
        """Hooked UNet forward(s) at 64x64 latents for one prompt batch: K/V of every attn2 copied to the host."""
        pipe = pair.custom
        ids = ids_of(pipe, [pipe.maybe_convert_prompt(t, pipe.tokenizer) for t in texts[: args.naive_batch]])
        caught, handles = [], []
        for name, mod in pipe.unet.named_modules():
            if name.endswith("attn2"):
                for proj in (mod.to_k, mod.to_v):
                    handles.append(proj.register_forward_hook(lambda _m, _i, out: caught.append(out.cpu())))
        latents = torch.randn(len(ids), 4, 64, 64, generator=torch.Generator().manual_seed(0)).to(args.device, dtype)
        try:
            sync()
            t = time.perf_counter()
            with torch.no_grad():
                c = pipe.text_encoder(ids)[0]
                pipe.unet(latents, torch.tensor(500, device=args.device), encoder_hidden_states=c)
            sync()
            return time.perf_counter() - t
        finally:
            for h in handles:
                h.remove()

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
        f"bench_record: device={args.device} ({torch.cuda.get_device_name() if cuda else 'cpu'}) "
        f"dtype={str(dtype).removeprefix('torch.')} store_dtype={args.store_dtype} prompts={args.prompts} "
        f"batch={args.batch_size} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"(models built in {build_s:.0f} s)"
    )
    print(f"  store: {size / 2**20:.1f} MiB on disk, {size / per / 2**20:.2f} MiB per prompt and model")
    print(
        f"  floor  (text encoder + attn2 K/V, nothing kept) {f_ms:9.1f} ms/prompt   runs (s): "
        f"{' '.join(f'{t:.2f}' for t in floors)}"
    )
    print(
        f"  record (record_store to zarr, all stages)       {r_ms:9.1f} ms/prompt   runs (s): "
        f"{' '.join(f'{t:.2f}' for t in records)}"
    )
    print(f"  naive  (hooked UNet step, 64x64, batch {args.naive_batch})        {n_ms:9.1f} ms/prompt")
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


if __name__ == "__main__":
    main()
