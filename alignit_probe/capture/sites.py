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

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import ProbeError
from ..schema import block_of, short_layer
from .sdpa import intercept_sdpa, recording

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

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


def attn2_paths(unet: UNet2DConditionModel) -> list[str]:
    """Module paths of every cross-attention layer (with a processor), in ``unet.attn_processors`` order (one walk
    over the modules; ``attn_processors`` takes 2.5× as long)."""
    return [name for name, m in unet.named_modules() if name.endswith(".attn2") and hasattr(m, "processor")]


def find_sites(unet: UNet2DConditionModel) -> list[Site]:
    sites = []
    for path in attn2_paths(unet):
        attn = unet.get_submodule(path)
        sites.append(Site(path, block_of(path), attn.heads, attn.to_q.out_features, attn.to_k.in_features))
    return sites


def layout(unet: UNet2DConditionModel) -> list[tuple[str, int, int]]:
    """What must agree between two UNets for their K/V to be compared: (path, heads, inner_dim) per site."""
    return [(s.path, s.heads, s.inner_dim) for s in find_sites(unet)]


def project_kv(attn: Attention, processor: object, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def probe_kv(attn: Attention, processor: object, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V of an unknown processor, caught at its attention call on a one-token query."""
    query = torch.zeros(c.shape[0], 1, attn.to_q.in_features, dtype=c.dtype, device=c.device)
    calls: list = []
    with intercept_sdpa(recording(calls)):
        processor(attn, query, encoder_hidden_states=c)
    if len(calls) != 1:
        raise ProbeError(
            f"cannot tell how {type(processor).__name__} computes keys/values (it made {len(calls)} SDPA calls)",
            "give the processor a project_kv(attn, c) method returning (key, value)",
        )
    _, k, v = calls[0]
    merge = lambda t: t.transpose(1, 2).reshape(c.shape[0], t.shape[2], -1)  # (b, h, s, d) -> (b, s, h*d)
    return merge(k), merge(v)


def record_kv(
    unet: UNet2DConditionModel, c: torch.Tensor, paths: list[str] | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """K/V at every (or the chosen) attn2 site for encoder states ``c``, computed by each site's active processor."""
    out = {}
    with torch.no_grad():
        for path in paths if paths is not None else attn2_paths(unet):
            attn = unet.get_submodule(path)
            out[path] = project_kv(attn, attn.processor, c)
    return out


def select_sites(
    unet: UNet2DConditionModel,
    layers: list[str] | None = None,
    blocks: list[str] | None = None,
    resolutions: list[int] | None = None,
) -> list[str]:
    """attn2 paths chosen by exact path (or its ``schema.short_layer`` label), by block (down/mid/up), and/or by
    resolution (attention-map side at the UNet's default sample size). All given filters apply together; none
    given: every site."""
    sites = find_sites(unet)
    valid = [s.path for s in sites]
    if layers:
        short = {short_layer(p): p for p in valid}  # the labels compare and the report print (down1.0, mid.0.t1)
        layers = [short.get(p, p) for p in layers]
        bad = [p for p in layers if p not in valid]
        if bad:
            raise ProbeError(
                f"no attn2 layer {bad[0]!r} in this UNet",
                "valid layers (paths, or the short labels compare prints): "
                + ", ".join(f"{p} ({short_layer(p)})" for p in valid),
            )
    if blocks:
        bad = [b for b in blocks if b not in ("down", "mid", "up")]
        if bad:
            raise ProbeError(f"unknown block {bad[0]!r}", "use down, mid or up")
    res = site_resolutions(unet)
    if resolutions:
        bad = [r for r in resolutions if r not in set(res.values())]
        if bad:
            raise ProbeError(
                f"no attn2 layer at resolution {bad[0]}",
                "valid resolutions: " + ", ".join(map(str, sorted(set(res.values()), reverse=True))),
            )
    return [
        s.path
        for s in sites
        if (not layers or s.path in layers)
        and (not blocks or s.block in blocks)
        and (not resolutions or res[s.path] in resolutions)
    ]


def site_resolutions(unet: UNet2DConditionModel) -> dict[str, int]:
    """Side of each attn2 layer's attention map at the UNet's default sample size (64, 32, 16, 8 for SD1.5)."""
    n_down = len(unet.config.block_out_channels)
    size = unet.config.sample_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    out = {}
    for path in attn2_paths(unet):
        head, idx = path.split(".")[0], path.split(".")[1]
        level = {"down_blocks": lambda i: i, "mid_block": lambda i: n_down - 1, "up_blocks": lambda i: n_down - 1 - i}[
            head
        ](int(idx) if idx.isdigit() else 0)
        out[path] = size // 2**level
    return out
