"""Matrix products that round by batch layout, as BLAS kernels may (they pick blocking, vector paths and the
split of a reduction by the shape and the thread count). On one machine the same shapes may never show it; on
another, a prompt encoded alone and in a batch of three differ in the last digit. Tests of a promised equality run
under ``layout_sensitive_linear`` so that they fail wherever the two sides of the promise are computed in different
batch layouts, whatever the machine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def layout_sensitive_linear(step: float = 2.0**-20) -> Iterator[None]:
    """Every ``nn.Linear`` (text encoders, attn2 projections, Custom Diffusion's and LoRA's layers) scales its
    result by ``1 + k·step``, ``k`` the number of rows of the product (batch × tokens) modulo 5: the same rows in
    another batch round differently, by a few float32 ulps."""
    plain = F.linear

    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = plain(x, weight, bias)
        rows = x.numel() // max(x.shape[-1], 1) if x.ndim else 1
        return y * (1 + (rows % 5) * step)

    F.linear = linear
    try:
        yield
    finally:
        F.linear = plain
