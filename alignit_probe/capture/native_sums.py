"""Bilinear maps summed on each layer's native grid, upsampled once when read.

Bilinear upsampling (``align_corners=False``) to a fixed grid is linear, so the sum over calls of upsampled maps is
the upsampled sum of the native maps (to float rounding): ``capture.attention`` adds each attn2 call's maps at their
native h×w (an SDXL layer at 1024 px: 64×64 or 32×32, not the 128×128 latent grid) and ``upsampled`` brings the sums
to the latent grid when the maps are read — one interpolation per sum instead of one per layer call and step. Sums
of layers with the same native grid are kept together for ``map_raw`` and ``map_window``; ``map_layer`` and
``map_head`` keep one per layer. (DAAM's aggregation clamps after bicubic upsampling, which is not linear: it is
upsampled call by call.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .map_options import AttentionSlices

NATIVE = "_native_"  # prefix of the running sums kept on native grids (never shown as variables)


def add_grid(
    get: Callable[..., torch.Tensor],
    slices: AttentionSlices,
    index: torch.Tensor,
    maps: torch.Tensor,
    step: int,
    prompts: int,
) -> None:
    """Add ``maps`` (row, token, h, w): head means of one call, or their sum over calls of several layers on one
    native grid, rows going to prompts ``index``, at UNet call ``step``, to the grid's ``map_raw`` and window sums;
    ``get(name, shape, device)`` gives a sum."""
    _, t, h, w = maps.shape
    dev, grid = maps.device, f"{h}x{w}"
    get(f"{NATIVE}raw_{grid}", (prompts, t, h, w), dev).index_add_(0, index, maps)
    for k, (a, b) in enumerate(slices.step_windows or ()):
        if a <= step < b:
            get(f"{NATIVE}window_{k}_{grid}", (prompts, t, h, w), dev).index_add_(0, index, maps)


def add_layer(
    get: Callable[..., torch.Tensor],
    slices: AttentionSlices,
    layer: int,
    index: torch.Tensor,
    maps: torch.Tensor,
    probs: torch.Tensor,
    prompts: int,
) -> None:
    """Add one call of layer ``layer`` to its own sums (``per_layer``, ``per_head``): ``maps`` (row, token, h, w)
    head means and ``probs`` (row, head, query, token)."""
    r, t, h, w = maps.shape
    dev = maps.device
    if slices.per_layer:
        get(f"{NATIVE}layer_{layer}", (prompts, t, h, w), dev).index_add_(0, index, maps)
    if slices.per_head:
        heads = probs.shape[1]
        head_maps = probs.transpose(-1, -2).reshape(r, heads, t, h, w)
        get(f"{NATIVE}head_{layer}", (prompts, heads, t, h, w), dev).index_add_(0, index, head_maps)


def upsampled(
    sums: dict[str, torch.Tensor],
    latent_hw: tuple[int, int],
    prompts: int,
    heads: list[int],
    slices: AttentionSlices,
) -> dict[str, torch.Tensor]:
    """``map_raw`` (prompt, token, y, x) and, as sliced, ``map_layer`` (prompt, layer, …), ``map_window`` (prompt,
    window, …) and ``map_head`` (prompt, layer, head, …) on the latent grid, from the native sums in ``sums``
    (layers and windows never called stay 0; heads a layer lacks stay 0)."""
    raws = [v for k, v in sums.items() if k.startswith(NATIVE + "raw_")]
    if not raws:
        return {}
    lh, lw = latent_hw
    t, dev, L = raws[0].shape[1], raws[0].device, len(heads)

    def up(m: torch.Tensor) -> torch.Tensor:  # (n, c, h, w) -> (n, c, lh, lw)
        return (
            m if tuple(m.shape[-2:]) == (lh, lw) else F.interpolate(m, (lh, lw), mode="bilinear", align_corners=False)
        )

    out = {}
    if slices.per_head:
        out["map_head"] = torch.zeros((prompts, L, max(heads), t, lh, lw), device=dev)
        for i in range(L):
            if (s := sums.get(f"{NATIVE}head_{i}")) is not None:
                n = s.shape[1]
                out["map_head"][:, i, :n] = up(s.reshape(prompts, n * t, *s.shape[-2:])).reshape(prompts, n, t, lh, lw)
    out["map_raw"] = sum(up(v) for v in raws)
    if slices.per_layer:
        out["map_layer"] = torch.zeros((prompts, L, t, lh, lw), device=dev)
        for i in range(L):
            if (s := sums.get(f"{NATIVE}layer_{i}")) is not None:
                out["map_layer"][:, i] = up(s)
    if slices.step_windows:
        out["map_window"] = torch.zeros((prompts, len(slices.step_windows), t, lh, lw), device=dev)
        for k in range(len(slices.step_windows)):
            for name, s in sums.items():
                if name.startswith(f"{NATIVE}window_{k}_"):
                    out["map_window"][:, k] += up(s)
    return out
