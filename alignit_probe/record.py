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

from .concepts import ROLES, TokenizedPrompt, tokenize_pair
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


def to_host(t: torch.Tensor, dtype) -> np.ndarray:
    """To host memory in the store's dtype, converted on the device (one copy, no float32 detour)."""
    return t.detach().to(TORCH_DTYPES[np.dtype(dtype).name]).cpu().numpy()


TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def token_coords(tokenized: list[TokenizedPrompt], start: int, n_tokens: int | None = None) -> xr.Dataset:
    """Per-token labels of one branch: ids, strings, roles, concept index, partner position in the reference.

    ``n_tokens`` keeps the first positions only; partners beyond them become -1."""
    pt = ("prompt", "token")
    n_tok = len(tokenized[0].ids) if n_tokens is None else n_tokens
    cut = slice(0, n_tok)
    ref = np.array([t.ref_index[cut] for t in tokenized], dtype=np.int16)
    return xr.Dataset(
        coords={
            "prompt": np.arange(start, start + len(tokenized)),
            "token": np.arange(n_tok),
            "prompt_text": ("prompt", np.array([t.text for t in tokenized], dtype=object)),
            "token_id": (pt, np.array([t.ids[cut] for t in tokenized], dtype=np.int64)),
            "token_str": (pt, np.array([t.tokens[cut] for t in tokenized], dtype=object)),
            "role": (pt, np.array([t.role[cut] for t in tokenized], dtype=object)),
            "concept": (pt, np.array([t.concept[cut] for t in tokenized], dtype=np.int16)),
            "ref_index": (pt, np.where(ref >= n_tok, -1, ref).astype(np.int16)),
        }
    )


def select_prompts(batch: Batch, which) -> Batch:
    """The batch restricted to some of its prompts (a boolean mask or indices along ``prompt``)."""
    return Batch(batch.coords.isel(prompt=which), {k: g.isel(prompt=which) for k, g in batch.groups.items()})


def keep_tokens(batch: Batch, n: int) -> Batch:
    """The batch's first ``n`` token positions (``--drop-padding``); partners beyond them become -1."""
    beyond = batch.coords.role.isel(token=slice(n, None))
    if (beyond != "padding").any():
        raise ValueError(f"keeping {n} token positions would drop tokens that are not padding")
    coords = batch.coords.isel(token=slice(0, n))
    coords = coords.assign_coords(ref_index=coords.ref_index.where(coords.ref_index < n, -1).astype(np.int16))
    return Batch(coords, {k: g.isel(token=slice(0, n)) for k, g in batch.groups.items()})


def record_batch(pipe, tokenized: list[TokenizedPrompt], start: int, *, clip_skip=None, store_dtype=np.float32,
                 kv_sites: list[str] | None = None, n_tokens: int | None = None) -> Batch:
    """Record all stages for one batch of tokenized prompts (global prompt indices start at ``start``).

    ``n_tokens`` keeps the first token positions only (``--drop-padding``): every stage is computed on all positions,
    exactly as without it, and cut before it leaves the device."""
    ids = torch.tensor([t.ids for t in tokenized])
    mask = torch.tensor([[r != "padding" for r in t.role] for t in tokenized], dtype=torch.long)
    st = encode_stages(pipe, ids, mask, clip_skip)
    c = st["encoder_output"].to(device=pipe.unet.device, dtype=pipe.unet.dtype)
    kv = record_kv(pipe.unet, c, kv_sites)
    coords = token_coords(tokenized, start, n_tokens)
    cut = slice(0, coords.sizes["token"])
    ptc = ("prompt", "token", "channel")
    index = {"prompt": coords.prompt.values, "token": coords.token.values}
    text = xr.Dataset(
        {
            "token_embedding": (ptc, to_host(st["token_embedding"][:, cut], store_dtype)),
            "encoder_layer": (("prompt", "layer", "token", "channel"), to_host(st["encoder_layer"][:, :, cut], store_dtype)),
            "encoder_output": (ptc, to_host(st["encoder_output"][:, cut], store_dtype)),
        },
        coords={**index, "layer": np.arange(st["encoder_layer"].shape[1])},
    )
    groups = {"text": text}
    for path, (k, v) in kv.items():
        groups[f"kv/{path}"] = xr.Dataset(
            {"key": (ptc, to_host(k[:, cut], store_dtype)), "value": (ptc, to_host(v[:, cut], store_dtype))}, coords=index,
            attrs={"site": path},
        )
    return Batch(coords, groups)


def iter_record(pipe, tokenized: list[TokenizedPrompt], *, start: int = 0, batch_size: int = 8, progress=None,
                **kwargs):
    """Record prompts batch by batch (a generator: callers stream batches to disk)."""
    for i in range(0, len(tokenized), batch_size):
        yield record_batch(pipe, tokenized[i : i + batch_size], start + i, **kwargs)
        if progress is not None:
            progress.update(len(tokenized[i : i + batch_size]))


class TokenTable:
    """Tokenized prompts of one model kept as integer arrays (prompt, token): ~1 KB a prompt where a list of
    ``TokenizedPrompt`` takes ~15 KB, so large prompt sets tokenize up front in little memory. Indexing (global
    prompt indices, ``range`` ``span``) gives ``TokenizedPrompt`` objects back; their alignment ``label`` is empty."""

    def __init__(self, tokenizer, span: range, length: int):
        self.tokenizer, self.span = tokenizer, span
        n = len(span)
        self.text: list[str] = [""] * n
        self.ids = np.zeros((n, length), np.int32)
        self.role = np.zeros((n, length), np.int8)
        self.concept = np.zeros((n, length), np.int16)
        self.ref_index = np.zeros((n, length), np.int16)
        self.dropped = np.zeros(n, np.int32)

    def set(self, k: int, tp: TokenizedPrompt) -> None:
        i = k - self.span.start
        self.text[i], self.ids[i], self.concept[i], self.ref_index[i] = tp.text, tp.ids, tp.concept, tp.ref_index
        self.role[i] = [ROLES.index(r) for r in tp.role]
        self.dropped[i] = tp.dropped

    def __len__(self) -> int:
        return len(self.span)

    def _get(self, i: int) -> TokenizedPrompt:
        ids = self.ids[i].tolist()
        return TokenizedPrompt(self.text[i], ids, self.tokenizer.convert_ids_to_tokens(ids),
                               [ROLES[r] for r in self.role[i]], self.concept[i].tolist(), [], int(self.dropped[i]),
                               self.ref_index[i].tolist())

    def __getitem__(self, k):
        """``table[k]`` (global index k) or ``table[a:b]`` (global indices a ≤ k < b, clipped to the span)."""
        if isinstance(k, slice):
            lo = max(k.start if k.start is not None else self.span.start, self.span.start)
            hi = min(k.stop if k.stop is not None else self.span.stop, self.span.stop)
            return [self._get(i - self.span.start) for i in range(lo, hi)]
        return self._get(k - self.span.start)


def tokenize_table(prompts: list[str], span: range, custom_pipe, baseline_tokenizer, concepts):
    """Tokenize (and role-align) ``prompts[span]`` one by one into compact tables; returns (customized table,
    baseline table, warnings). The warnings are ``concepts.tokenize_prompts``' (global prompt numbers)."""
    length = custom_pipe.tokenizer.model_max_length
    custom = TokenTable(custom_pipe.tokenizer, span, length)
    base = TokenTable(baseline_tokenizer, span, baseline_tokenizer.model_max_length)
    warnings = []
    for k in span:
        ct, bt = tokenize_pair(prompts[k], custom_pipe, baseline_tokenizer, concepts)
        for name, tp in (("customized", ct), ("baseline", bt)):
            if tp.dropped:
                warnings.append(f"prompt {k} truncated for the {name} model: {tp.dropped} token(s) beyond the "
                                f"encoder's {len(tp.ids)} dropped")
        custom.set(k, ct)
        base.set(k, bt)
    return custom, base, warnings
