"""Precomputed keys and values, injected into attn2 during an ordinary diffusers pipeline call.

``inject_kv(unet, cond_embeds, kv)`` swaps the processor of each chosen attn2 layer for ``InjectKV``, which calls the
original processor (plain, SDPA, Custom Diffusion, LoRA-wrapped: its query and output projection stay exactly as they
were) and replaces, at its attention call, the keys/values of the conditional rows only — rows found by exact content
(``guidance.CondRows``), never by batch size — with K/V computed once per prompt. The unconditional branch is
untouched. Original processors come back on exit, also on error.

The K/V a layer attends with are built once per encoder-states tensor (diffusers hands the same one to every step
of a pipeline call) and reused at the steps after: no tensor operation is added to a step. The unconditional rows'
K/V in them are the layer's own from the first step, so the layer's projections must not change during one
pipeline call (they do not in diffusers' pipelines; a callback that rescales a LoRA between steps would need one
``inject_kv`` block per step). Where the wrapped processor is diffusers' ``AttnProcessor2_0`` on a plain layer (SD's
attn2), the steps after the first attend with those K/V directly (``attend``): the layer's own key and value
projections, whose results would be replaced anyway, are not computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ProbeError
from .guidance import CondRows
from .sdpa import intercept_sdpa
from .sites import attn2_paths, project_kv

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention


class InjectKV(nn.Module):
    """Wraps one attn2 processor; ``key``/``value``: (prompt, token, inner_dim) or None (keep the layer's own)."""

    def __init__(self, inner, cond: CondRows, key: torch.Tensor | None, value: torch.Tensor | None):
        super().__init__()
        self.inner = inner
        self.cond = cond
        self.key, self.value = key, value
        self.hits = 0
        self._spliced: dict[tuple, tuple] = {}  # CondRows.key(ehs) -> (ehs, key, value) as attention gets them
        self._plain_layer: bool | None = None  # ``attend`` may stand in for the processor (decided at first use)
        self._heads: dict[
            tuple, tuple
        ] = {}  # (rows, which, dtype, device) -> K/V in the (batch, head, token, d) layout

    def _for(self, t, rows_like, which):
        return t[which].to(device=rows_like.device, dtype=rows_like.dtype)

    def _in_head_layout(self, key, rows, which):
        """The injected K/V of ``which`` prompts as (len(rows), heads, token, head_dim), built once per call layout."""
        cache_key = (tuple(rows), tuple(which), key.dtype, key.device, key.shape[1])
        hit = self._heads.get(cache_key)
        if hit is None:
            _, h, t, d = key.shape
            idx = self.cond.index(rows, key.device)
            shape = lambda x: None if x is None else self._for(x, key, which).view(len(rows), t, h, d).transpose(1, 2)
            hit = self._heads[cache_key] = (idx, shape(self.key), shape(self.value))
        return hit

    def _plain(self, attn: Attention, hidden_states: torch.Tensor, key: torch.Tensor) -> bool:
        """Whether ``attend`` computes what the wrapped processor would: diffusers' ``AttnProcessor2_0`` on a layer
        with no normalization, residual or mask of its own (SD's attn2 layers), tokens as rows."""
        if self._plain_layer is None:
            cls = type(self.inner)
            self._plain_layer = (
                cls.__name__ == "AttnProcessor2_0"
                and cls.__module__.startswith("diffusers.")
                and all(getattr(attn, n, None) is None for n in ("spatial_norm", "group_norm", "norm_q", "norm_k"))
                and not attn.residual_connection
            )
        return self._plain_layer and hidden_states.ndim == 3 and hidden_states.shape[0] == key.shape[0]

    def project_kv(self, attn: Attention, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V this layer uses for encoder states ``c`` (so recording through the wrapper sees the injection)."""
        k, v = project_kv(attn, self.inner, c)
        rows, which = self.cond.match(c)
        if rows:
            k, v = k.clone(), v.clone()
            if self.key is not None:
                k[rows] = self._for(self.key, k, which)
            if self.value is not None:
                v[rows] = self._for(self.value, v, which)
        return k, v

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        rows, which = self.cond.match(encoder_hidden_states)
        if not rows:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        self.hits += 1
        ehs_key = CondRows.key(encoder_hidden_states)
        hit = self._spliced.get(ehs_key)
        if hit is not None and attention_mask is None and not kwargs and self._plain(attn, hidden_states, hit[1]):
            return attend(attn, hidden_states, hit[1], hit[2])

        def swapped(sdpa, query, key, value, *args, **kw):
            hit = self._spliced.get(ehs_key)
            if hit is None or hit[1].shape != key.shape or hit[1].dtype != key.dtype:
                idx, k, v = self._in_head_layout(key, rows, which)
                if k is not None:
                    key = key.index_copy(0, idx, k)
                if v is not None:
                    value = value.index_copy(0, idx, v)
                hit = self._spliced[ehs_key] = (encoder_hidden_states, key, value)
                if len(self._spliced) > 4:
                    self._spliced.pop(next(iter(self._spliced)))
            return sdpa(query, hit[1], hit[2], *args, **kw)

        with intercept_sdpa(swapped):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


def attend(attn: Attention, hidden_states: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """attn2 on ``hidden_states`` (batch, query, channel) with ``key``/``value`` given in the (batch, head, token,
    head_dim) layout SDPA takes: the operations of diffusers' ``AttnProcessor2_0`` on a layer without normalization,
    residual or mask, less the key and value projections — the query projection, SDPA (called through
    ``F.scaled_dot_product_attention``, so interceptors see it), the output projection and its dropout, the output
    rescaling."""
    batch, heads, head_dim = hidden_states.shape[0], attn.heads, key.shape[-1]
    query = attn.to_q(hidden_states).view(batch, -1, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    return out / attn.rescale_output_factor


@contextlib.contextmanager
def inject_kv(
    unet: UNet2DConditionModel,
    cond_embeds: torch.Tensor,
    kv: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]],
    require_use: bool = True,
) -> Iterator[dict[str, InjectKV]]:
    """Inject ``kv[path] = (key, value)`` (each (prompt, token, inner_dim) or None) at those attn2 layers for the
    conditional rows ``cond_embeds`` (the ``prompt_embeds`` the caller hands the pipeline)."""
    cond = CondRows(cond_embeds)
    valid = attn2_paths(unet)
    bad = [path for path in kv if path not in valid]
    if bad:
        raise ProbeError(f"no attn2 layer {bad[0]!r} in this UNet", "valid layers: " + ", ".join(valid))
    layers = {path: unet.get_submodule(path) for path in kv}
    original = {path: attn.processor for path, attn in layers.items()}
    wrappers = {path: InjectKV(original[path], cond, k, v) for path, (k, v) in kv.items()}
    try:
        for path, attn in layers.items():  # per layer: set_attn_processor walks the whole UNet, twice
            attn.set_processor(wrappers[path])
        yield wrappers
    finally:
        for path, attn in layers.items():
            attn.set_processor(original[path])
    if require_use and wrappers and not any(w.hits for w in wrappers.values()):
        raise ProbeError(
            "injected keys/values were never used: the pipeline's conditioning did not match",
            "pass the same tensor as prompt_embeds= to the pipeline call inside the with-block",
        )
