"""Recording every stage of the text path: one text-encoder forward per model and prompt batch, no denoising.

Stages (names used everywhere, store and ``compare --json`` included):
``token_embedding`` (input embeddings, before position embeddings), ``encoder_layer`` (hidden state after every
encoder layer), ``encoder_output`` (what the pipeline hands the UNet, clip-skip respected), and ``key`` / ``value`` at
every attn2 site, computed by each site's active attention processor (``sites.project_kv``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from .concepts import TokenizedPrompt
from .sites import record_kv

STAGES = ("token_embedding", "encoder_layer", "encoder_output", "key", "value")
TEXT_STAGES = STAGES[:3]


def encode_stages(pipe, ids: torch.Tensor, attention_mask: torch.Tensor | None = None, clip_skip: int | None = None):
    """Token embeddings, every encoder layer's output and the encoder output (as ``pipe.encode_prompt`` builds it)."""
    te = pipe.text_encoder
    ids = ids.to(te.device)
    if not getattr(te.config, "use_attention_mask", False):
        attention_mask = None
    elif attention_mask is not None:
        attention_mask = attention_mask.to(te.device)
    with torch.no_grad():
        out = te(ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.hidden_states
        if clip_skip is None:
            c = out[0]
        else:
            c = te.text_model.final_layer_norm(hidden[-(clip_skip + 1)])
        return {
            "token_embedding": te.get_input_embeddings()(ids),
            "encoder_layer": torch.stack(hidden[1:], dim=1),
            "encoder_output": c.to(te.dtype),
        }


def encoder_states(pipe, tokenized: list[TokenizedPrompt], clip_skip: int | None = None) -> torch.Tensor:
    """The conditional encoder output c for tokenized prompts, on the UNet's device and dtype."""
    ids = torch.tensor([t.ids for t in tokenized])
    mask = torch.tensor([[r != "padding" for r in t.role] for t in tokenized], dtype=torch.long)
    c = encode_stages(pipe, ids, mask, clip_skip)["encoder_output"]
    return c.to(device=pipe.unet.device, dtype=pipe.unet.dtype)


@dataclass
class Batch:
    """One recorded batch of prompts: labeled xarray groups keyed by their path under the model's branch."""

    coords: xr.Dataset
    groups: dict[str, xr.Dataset]


def _np(t: torch.Tensor, dtype) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().astype(dtype, copy=False)


def token_coords(tokenized: list[TokenizedPrompt], start: int) -> xr.Dataset:
    """Per-token labels of one branch: ids, strings, roles, concept index, partner position in the reference."""
    pt = ("prompt", "token")
    n_tok = len(tokenized[0].ids)
    return xr.Dataset(
        coords={
            "prompt": np.arange(start, start + len(tokenized)),
            "token": np.arange(n_tok),
            "prompt_text": ("prompt", np.array([t.text for t in tokenized], dtype=object)),
            "token_id": (pt, np.array([t.ids for t in tokenized], dtype=np.int64)),
            "token_str": (pt, np.array([t.tokens for t in tokenized], dtype=object)),
            "role": (pt, np.array([t.role for t in tokenized], dtype=object)),
            "concept": (pt, np.array([t.concept for t in tokenized], dtype=np.int16)),
            "ref_index": (pt, np.array([t.ref_index for t in tokenized], dtype=np.int16)),
        }
    )


def record_batch(pipe, tokenized: list[TokenizedPrompt], start: int, *, clip_skip=None, store_dtype=np.float32,
                 kv_sites: list[str] | None = None) -> Batch:
    """Record all stages for one batch of tokenized prompts (global prompt indices start at ``start``)."""
    ids = torch.tensor([t.ids for t in tokenized])
    mask = torch.tensor([[r != "padding" for r in t.role] for t in tokenized], dtype=torch.long)
    st = encode_stages(pipe, ids, mask, clip_skip)
    c = st["encoder_output"].to(device=pipe.unet.device, dtype=pipe.unet.dtype)
    kv = record_kv(pipe.unet, c, kv_sites)
    coords = token_coords(tokenized, start)
    ptc = ("prompt", "token", "channel")
    index = {"prompt": coords.prompt.values, "token": coords.token.values}
    text = xr.Dataset(
        {
            "token_embedding": (ptc, _np(st["token_embedding"], store_dtype)),
            "encoder_layer": (("prompt", "layer", "token", "channel"), _np(st["encoder_layer"], store_dtype)),
            "encoder_output": (ptc, _np(st["encoder_output"], store_dtype)),
        },
        coords={**index, "layer": np.arange(st["encoder_layer"].shape[1])},
    )
    groups = {"text": text}
    for path, (k, v) in kv.items():
        groups[f"kv/{path}"] = xr.Dataset(
            {"key": (ptc, _np(k, store_dtype)), "value": (ptc, _np(v, store_dtype))}, coords=index, attrs={"site": path}
        )
    return Batch(coords, groups)


def iter_record(pipe, tokenized: list[TokenizedPrompt], *, start: int = 0, batch_size: int = 8, progress=None,
                **kwargs):
    """Record prompts batch by batch (a generator: callers stream batches to disk)."""
    for i in range(0, len(tokenized), batch_size):
        yield record_batch(pipe, tokenized[i : i + batch_size], start + i, **kwargs)
        if progress is not None:
            progress.update(len(tokenized[i : i + batch_size]))
