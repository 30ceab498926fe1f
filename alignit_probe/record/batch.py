"""Recording every stage of the text path for one batch of prompts: one text-encoder forward per model, then the
K/V projection at every attn2 site, no denoising (stage names: ``schema``).

``token_embedding``, ``encoder_layer`` and ``encoder_output`` (SDXL: per encoder, and ``pooled``) come from
``models.encoder.encode_groups``; ``key`` / ``value`` at every attn2 site are computed by each site's active attention
processor (``capture.sites.project_kv``) from ``encoder_output``. ``stage_tensors`` leaves them on the device
(``summary`` reduces them there); ``record_batch`` moves them to the host, one store group per text group.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr
from numpy.typing import DTypeLike

from ..alignit.engine import Encoded
from ..capture.sites import record_kv
from ..models.encoder import encode_groups, output_group
from ..models.pipes import placement
from ..store.batch import Batch, token_coords
from ..text.concepts import TokenizedPrompt

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from tqdm import tqdm


def to_host(t: torch.Tensor, dtype: DTypeLike) -> np.ndarray:
    """To host memory in the store's dtype, converted on the device (one copy, no float32 detour)."""
    return t.detach().to(TORCH_DTYPES[np.dtype(dtype).name]).cpu().numpy()


def to_host_all(tensors: list[torch.Tensor], dtype: DTypeLike) -> list[np.ndarray]:
    """``to_host`` of every tensor of a batch. From a CUDA device, into page-locked buffers: every copy queued
    without waiting, then one wait (an H200 copies ~50 GiB/s into page-locked memory, 1.5 GiB/s into pageable
    memory). The buffers (``PINNED_CHUNK`` each, or one tensor's size where larger) come from torch's caching host
    allocator, which rounds sizes up to a power of two and keeps freed blocks: the first batches of a run pay for
    locking their pages (~0.45 ms per MiB), the later ones reuse them as the writer frees earlier batches' arrays;
    ``release_host_copies`` gives them back at the end of a run."""
    devices = {t.device for t in tensors}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        return [to_host(t, dtype) for t in tensors]
    kind = TORCH_DTYPES[np.dtype(dtype).name]
    tensors = [t.detach().to(kind) for t in tensors]
    limit = PINNED_CHUNK // torch.empty((), dtype=kind).element_size()
    out = []
    try:
        for chunk in ([tensors[i] for i in run] for run in pack([t.numel() for t in tensors], limit)):
            buffer = torch.empty(sum(t.numel() for t in chunk), dtype=kind, pin_memory=True)
            at = 0
            for t in chunk:
                dst = buffer[at : at + t.numel()].view(t.shape)
                dst.copy_(t, non_blocking=True)
                out.append(dst)
                at += t.numel()
    except RuntimeError:  # page-locked memory refused (memlock limit): pageable copies
        torch.cuda.current_stream(next(iter(devices))).synchronize()
        return [t.cpu().numpy() for t in tensors]
    torch.cuda.current_stream(next(iter(devices))).synchronize()
    return [t.numpy() for t in out]


PINNED_CHUNK = 64 * 2**20  # bytes per page-locked buffer: a power of two, so the allocator's rounding wastes little


def pack(sizes: list[int], limit: int) -> list[list[int]]:
    """Consecutive runs of item indices whose sizes add up to at most ``limit`` (an item larger than ``limit`` is a
    run of its own), in order."""
    runs: list[list[int]] = []
    total = limit + 1
    for i, n in enumerate(sizes):
        if not runs or total + n > limit:
            runs.append([])
            total = 0
        runs[-1].append(i)
        total += n
    return runs


def release_host_copies() -> None:
    """Give back the page-locked memory ``to_host_all`` left cached in torch's caching host allocator (a notebook
    that records once should not keep gigabytes locked); nothing where torch lacks
    ``torch.accelerator.empty_host_cache``."""
    empty = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
    if empty is not None:
        empty()


TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def stage_tensors(
    pipe: StableDiffusionPipeline,
    tokenized: list[TokenizedPrompt],
    *,
    clip_skip: int | None = None,
    kv_sites: list[str] | None = None,
) -> dict:
    """Every stage of one batch on the model's device: the text groups of ``models.encoder.encode_groups`` ({group:
    {stage: tensor}}, each (prompt, [layer,] token, channel) over all token positions; SDXL's ``pooled`` (prompt,
    channel)) and ``kv`` ({attn2 path: (key, value)})."""
    groups = encode_groups(pipe, tokenized, clip_skip)
    device, dtype = placement(pipe.unet)
    c = output_group(groups)["encoder_output"].to(device=device, dtype=dtype)
    return {**groups, "kv": record_kv(pipe.unet, c, kv_sites)}


def as_encoded(pipe: StableDiffusionPipeline, tokenized: list[TokenizedPrompt], stages: dict) -> Encoded:
    """``stage_tensors`` as AlignIT takes a recorded encoding (``alignit.engine.Encoded``): c and the pooled
    embedding on the UNet's device and dtype, exactly as ``models.encoder.conditioning`` hands them over."""
    out = output_group({g: v for g, v in stages.items() if g != "kv"})
    device, dtype = placement(pipe.unet)
    pooled = out.get("pooled")
    pooled = None if pooled is None else pooled.to(device=device, dtype=dtype)
    return Encoded(tokenized, out["encoder_output"].to(device=device, dtype=dtype), pooled, stages["kv"])


def cut_tokens(name: str, t: torch.Tensor, cut: slice) -> torch.Tensor:
    """A stage's tensor with the token positions kept (``pooled`` has none)."""
    if name == "encoder_layer":
        return t[:, :, cut]
    return t if name == "pooled" else t[:, cut]


def text_dataset(stages: dict[str, np.ndarray], index: dict) -> xr.Dataset:
    """One text group as a Dataset, from its stages on the host: ``encoder_layer`` (prompt, layer, token, channel),
    ``pooled`` (prompt, pooled_channel: its own width), every other stage (prompt, token, channel)."""
    variables, coords = {}, dict(index)
    for name, a in stages.items():
        if name == "encoder_layer":
            variables[name] = (("prompt", "layer", "token", "channel"), a)
            coords["layer"] = np.arange(a.shape[1])
        elif name == "pooled":
            variables[name] = (("prompt", "pooled_channel"), a)
        else:
            variables[name] = (("prompt", "token", "channel"), a)
    return xr.Dataset(variables, coords=coords)


def record_batch(
    pipe: StableDiffusionPipeline,
    tokenized: list[TokenizedPrompt],
    start: int,
    *,
    clip_skip: int | None = None,
    store_dtype: DTypeLike = np.float32,
    kv_sites: list[str] | None = None,
    n_tokens: int | None = None,
    stages: dict | None = None,
) -> Batch:
    """Record all stages for one batch of tokenized prompts (global prompt indices start at ``start``).

    ``n_tokens`` keeps the first token positions only (``--drop-padding``): every stage is computed on all positions,
    exactly as without it, and cut before it leaves the device. ``stages``: ``stage_tensors`` of these prompts,
    computed already (then ``clip_skip`` and ``kv_sites`` are what computed them)."""
    st = stages if stages is not None else stage_tensors(pipe, tokenized, clip_skip=clip_skip, kv_sites=kv_sites)
    coords = token_coords(tokenized, start, n_tokens)
    cut = slice(0, coords.sizes["token"])
    ptc = ("prompt", "token", "channel")
    index = {"prompt": coords.prompt.values, "token": coords.token.values}
    text = [(g, name, cut_tokens(name, t, cut)) for g, stages in st.items() if g != "kv" for name, t in stages.items()]
    kv = [t[:, cut] for k_v in st["kv"].values() for t in k_v]
    host = to_host_all([t for _, _, t in text] + kv, store_dtype)  # one wait for the whole batch
    stages: dict[str, dict[str, np.ndarray]] = {}
    for (g, name, _), a in zip(text, host):
        stages.setdefault(g, {})[name] = a
    groups = {g: text_dataset(arrays, index) for g, arrays in stages.items()}
    shared = xr.Coordinates(index)  # one index object for every site: half the cost of each Dataset
    for i, path in enumerate(st["kv"]):
        k, v = host[len(text) + 2 * i], host[len(text) + 2 * i + 1]
        groups[f"kv/{path}"] = xr.Dataset({"key": (ptc, k), "value": (ptc, v)}, coords=shared, attrs={"site": path})
    return Batch(coords, groups)


def iter_record(
    pipe: StableDiffusionPipeline,
    tokenized: list[TokenizedPrompt],
    *,
    start: int = 0,
    batch_size: int = 8,
    progress: tqdm | None = None,
    **kwargs: Any,
) -> Iterator[Batch]:
    """Record prompts batch by batch (a generator: callers stream batches to disk)."""
    for i in range(0, len(tokenized), batch_size):
        yield record_batch(pipe, tokenized[i : i + batch_size], start + i, **kwargs)
        if progress is not None:
            progress.update(len(tokenized[i : i + batch_size]))
