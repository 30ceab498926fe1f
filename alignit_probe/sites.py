"""Where the text path reaches the UNet: every cross-attention (``attn2``) layer, and how its active processor
turns the encoder output c into keys and values.

Sites are found by ``unet.attn_processors`` keys ending in ``.attn2.processor`` (never by class name), and named by
their module path, e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn2``.

``project_kv(attn, processor, c)`` computes K and V exactly as the processor would inside a denoising step:

* Custom Diffusion processors (``train_kv``) use their own ``to_k_custom_diffusion``/``to_v_custom_diffusion``
  (in their weight dtype, cast back to ``attn.to_q``'s dtype), bypassing ``attn.to_k``;
* every other processor uses ``attn.to_k``/``attn.to_v``, which includes LoRA layers wrapped around them;
* ``norm_cross`` is applied first where the layer has it;
* a processor may declare ``project_kv(attn, c)`` itself (AlignIT's and capture processors delegate this way).
Processors of other classes are probed: they are run on one query token while ``scaled_dot_product_attention`` is
intercepted, so a new customization method is recorded exactly without any code here knowing it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUFFIX = ".processor"
STANDARD_PROCESSORS = {"AttnProcessor", "AttnProcessor2_0", "XFormersAttnProcessor", "FusedAttnProcessor2_0"}


@dataclass(frozen=True)
class Site:
    """One attn2 layer: its module path, block (down/mid/up), heads and widths."""

    path: str
    block: str
    heads: int
    inner_dim: int
    cross_attention_dim: int

    @property
    def head_dim(self) -> int:
        return self.inner_dim // self.heads


def _block_of(path: str) -> str:
    return path.split(".", 1)[0].replace("_blocks", "").replace("_block", "")


def attn2_paths(unet) -> list[str]:
    """Module paths of every cross-attention layer, in ``unet.attn_processors`` order."""
    return [k[: -len(SUFFIX)] for k in unet.attn_processors if k.endswith(".attn2" + SUFFIX)]


def find_sites(unet) -> list[Site]:
    sites = []
    for path in attn2_paths(unet):
        attn = unet.get_submodule(path)
        sites.append(Site(path, _block_of(path), attn.heads, attn.to_q.out_features, attn.to_k.in_features))
    return sites


def layout(unet) -> list[tuple[str, int, int]]:
    """What must agree between two UNets for their K/V to be compared: (path, heads, inner_dim) per site."""
    return [(s.path, s.heads, s.inner_dim) for s in find_sites(unet)]


def project_kv(attn, processor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of encoder states ``c`` (batch, token, channel) as ``processor`` computes them in ``attn``."""
    own = getattr(processor, "project_kv", None)
    if callable(own):
        return own(attn, c)
    if attn.norm_cross:
        c = attn.norm_encoder_hidden_states(c)
    if getattr(processor, "train_kv", False) and hasattr(processor, "to_k_custom_diffusion"):
        k = processor.to_k_custom_diffusion(c.to(processor.to_k_custom_diffusion.weight.dtype))
        v = processor.to_v_custom_diffusion(c.to(processor.to_v_custom_diffusion.weight.dtype))
        return k.to(attn.to_q.weight.dtype), v.to(attn.to_q.weight.dtype)
    name = type(processor).__name__
    if name in STANDARD_PROCESSORS or name.startswith("CustomDiffusion"):
        return attn.to_k(c), attn.to_v(c)
    return probe_kv(attn, processor, c)


@contextlib.contextmanager
def intercept_sdpa(sink: list):
    """Record (query, key, value) of every ``F.scaled_dot_product_attention`` call made inside the block."""
    original = F.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        sink.append((query, key, value))
        return original(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        yield sink
    finally:
        F.scaled_dot_product_attention = original


def probe_kv(attn, processor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V of an unknown processor, caught at its attention call on a one-token query."""
    from .errors import ProbeError

    query = torch.zeros(c.shape[0], 1, attn.to_q.in_features, dtype=c.dtype, device=c.device)
    with intercept_sdpa([]) as calls:
        processor(attn, query, encoder_hidden_states=c)
    if len(calls) != 1:
        raise ProbeError(
            f"cannot tell how {type(processor).__name__} computes keys/values (it made {len(calls)} SDPA calls)",
            "give the processor a project_kv(attn, c) method returning (key, value)",
        )
    _, k, v = calls[0]
    merge = lambda t: t.transpose(1, 2).reshape(c.shape[0], t.shape[2], -1)  # (b, h, s, d) -> (b, s, h*d)
    return merge(k), merge(v)


def record_kv(unet, c: torch.Tensor, paths: list[str] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """K/V at every (or the chosen) attn2 site for encoder states ``c``, computed by each site's active processor."""
    processors = unet.attn_processors
    out = {}
    with torch.no_grad():
        for path in paths if paths is not None else attn2_paths(unet):
            out[path] = project_kv(unet.get_submodule(path), processors[path + SUFFIX], c)
    return out
