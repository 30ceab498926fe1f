"""Recording every stage of the text path for one batch of prompts: one text-encoder forward per model, then the
K/V projection at every attn2 site, no denoising (stage names: ``schema``).

``token_embedding``, ``encoder_layer`` and ``encoder_output`` (SDXL: per encoder, and ``pooled``) come from
``text.encoder.encode_groups``; ``key`` / ``value`` at every attn2 site are computed by each site's active attention
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

from ..capture.sites import record_kv
from ..models.pipes import placement
from ..store.batch import Batch, token_coords
from ..text.concepts import TokenizedPrompt
from ..text.encoder import encode_groups, output_group

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from tqdm import tqdm


def to_host(t: torch.Tensor, dtype: DTypeLike) -> np.ndarray:
    """To host memory in the store's dtype, converted on the device (one copy, no float32 detour)."""
    return t.detach().to(TORCH_DTYPES[np.dtype(dtype).name]).cpu().numpy()


TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def stage_tensors(
    pipe: StableDiffusionPipeline,
    tokenized: list[TokenizedPrompt],
    *,
    clip_skip: int | None = None,
    kv_sites: list[str] | None = None,
) -> dict:
    """Every stage of one batch on the model's device: the text groups of ``text.encoder.encode_groups`` ({group:
    {stage: tensor}}, each (prompt, [layer,] token, channel) over all token positions; SDXL's ``pooled`` (prompt,
    channel)) and ``kv`` ({attn2 path: (key, value)})."""
    groups = encode_groups(pipe, tokenized, clip_skip)
    device, dtype = placement(pipe.unet)
    c = output_group(groups)["encoder_output"].to(device=device, dtype=dtype)
    return {**groups, "kv": record_kv(pipe.unet, c, kv_sites)}


def text_dataset(stages: dict, index: dict, cut: slice, store_dtype: DTypeLike) -> xr.Dataset:
    """One text group as a Dataset: ``encoder_layer`` (prompt, layer, token, channel), ``pooled`` (prompt,
    pooled_channel: its own width), every other stage (prompt, token, channel)."""
    variables, coords = {}, dict(index)
    for name, t in stages.items():
        if name == "encoder_layer":
            variables[name] = (("prompt", "layer", "token", "channel"), to_host(t[:, :, cut], store_dtype))
            coords["layer"] = np.arange(t.shape[1])
        elif name == "pooled":
            variables[name] = (("prompt", "pooled_channel"), to_host(t, store_dtype))
        else:
            variables[name] = (("prompt", "token", "channel"), to_host(t[:, cut], store_dtype))
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
) -> Batch:
    """Record all stages for one batch of tokenized prompts (global prompt indices start at ``start``).

    ``n_tokens`` keeps the first token positions only (``--drop-padding``): every stage is computed on all positions,
    exactly as without it, and cut before it leaves the device."""
    st = stage_tensors(pipe, tokenized, clip_skip=clip_skip, kv_sites=kv_sites)
    coords = token_coords(tokenized, start, n_tokens)
    cut = slice(0, coords.sizes["token"])
    ptc = ("prompt", "token", "channel")
    index = {"prompt": coords.prompt.values, "token": coords.token.values}
    groups = {name: text_dataset(stages, index, cut, store_dtype) for name, stages in st.items() if name != "kv"}
    shared = xr.Coordinates(index)  # one index object for every site: half the cost of each Dataset
    for path, (k, v) in st["kv"].items():
        groups[f"kv/{path}"] = xr.Dataset(
            {"key": (ptc, to_host(k[:, cut], store_dtype)), "value": (ptc, to_host(v[:, cut], store_dtype))},
            coords=shared,
            attrs={"site": path},
        )
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
