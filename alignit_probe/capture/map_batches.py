"""Attention probabilities of attn2 calls: many computed together once per step (the hot path), or call by call.

Where a UNet step runs eagerly, each tensor operation costs its launch on the host (~10 µs on a GPU) whatever its
size, and at SDXL's sizes the host is what a step waits for: probabilities computed call by call add ~15 operations
to each of SDXL's 70 attn2 calls per step. ``Pending`` holds each call's conditional (query, key) until the step
ends, grouped by what lets calls be stacked (query and key shapes, dtype, device, scale, rows, step), and hands a
group back once its probabilities reach ``LIMIT`` elements (memory stays bounded); ``probabilities`` computes a
group's softmax(Q Kᵀ · scale) in float32 with one batched product. Each slice of it is what the call alone gives
(the same float32 product and softmax), so the sums differ from call-by-call ones only in the order of additions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ProbeError

LIMIT = 2**25  # probabilities (float32 elements) per computed group: 128 MiB, plus its softmax


@dataclass
class Group:
    """Calls waiting to be computed together: their layers, conditional queries (row, head, query, d) and keys
    (row, head, token, d)."""

    scale: float
    layers: list[int] = field(default_factory=list)
    queries: list[torch.Tensor] = field(default_factory=list)
    keys: list[torch.Tensor] = field(default_factory=list)
    elements: int = 0


class Pending:
    """Calls by group key; ``add`` returns a group that is full, ``drain`` all the others."""

    def __init__(self, limit: int | None = None):
        self.limit = LIMIT if limit is None else limit
        self.groups: dict[tuple, Group] = {}

    def add(self, key: tuple, layer: int, query: torch.Tensor, k: torch.Tensor, scale: float) -> Group | None:
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(scale)
        group.layers.append(layer)
        group.queries.append(query)
        group.keys.append(k)
        r, h, n, _ = query.shape
        group.elements += r * h * n * k.shape[-2]
        if group.elements >= self.limit:
            return self.groups.pop(key)
        return None

    def drain(self) -> list[tuple[tuple, Group]]:
        out, self.groups = list(self.groups.items()), {}
        return out

    def clear(self) -> None:
        self.groups = {}


def probabilities(group: Group) -> torch.Tensor:
    """(layer, row, head, query, token) float32 softmax(Q Kᵀ · scale) of a group's calls."""
    q = torch.stack(group.queries).float()
    k = torch.stack(group.keys).float()
    n_layers, r, h, n, d = q.shape
    t = k.shape[-2]
    s = torch.bmm(q.view(-1, n, d), k.view(-1, t, d).transpose(1, 2)).mul_(group.scale)
    return s.softmax(-1).view(n_layers, r, h, n, t)


def rows_of(t: torch.Tensor, batch: int, rows: slice | list[int]) -> torch.Tensor:
    """(batch, heads, s, e) or (batch·heads, s, e) → (rows, heads, s, e); a broadcast batch of 1 is kept."""
    if t.dim() == 3 and t.shape[0] % batch == 0:
        t = t.reshape(batch, -1, *t.shape[-2:])
    elif t.dim() != 4:
        t = t.reshape(t.shape[0] if t.dim() > 4 else 1, -1, *t.shape[-2:])
    return t[rows] if t.shape[0] == batch else t


def call_probabilities(name: str, calls: Sequence, batch: int, tokens: int, rows: slice | list[int]) -> torch.Tensor:
    """(rows, heads, queries, tokens) float32 attention probabilities of one cross-attention call, from what it
    handed SDPA (``calls``: its intercepted calls, ``kind`` "sdpa" or "scores") — the call-by-call path, for calls
    with a mask, sliced processors and DAAM's aggregation."""
    if rows == list(range(rows[0], rows[-1] + 1)):
        rows = slice(rows[0], rows[-1] + 1)  # a view, not a gather
    sdpa = [c.tensors for c in calls if c.kind == "sdpa" and c.tensors[1].shape[-2] == tokens]
    if len(sdpa) == 1:
        q, k, mask, scale, causal = sdpa[0]
        if causal:
            raise ProbeError(f"{name} called causal attention in a cross-attention layer")
        q, k = rows_of(q, batch, rows).float(), rows_of(k, batch, rows).float()
        s = torch.matmul(q, k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
        if mask is not None:
            mask = rows_of(mask, batch, rows)
            s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.float()
        return s.softmax(-1)
    scores = [c.tensors[0] for c in calls if c.kind == "scores" and c.tensors[0].shape[-1] == tokens]
    if not sdpa and scores:
        probs = torch.cat(scores, 0)  # sliced processors split batch·heads in order
        if probs.shape[0] % batch == 0:
            return rows_of(probs.reshape(batch, -1, *probs.shape[-2:]), batch, rows).float()
    raise ProbeError(
        f"cannot read attention probabilities from {name} ({len(sdpa)} SDPA calls, {len(scores)} score calls)",
        "use a processor that makes one F.scaled_dot_product_attention call per cross-attention",
    )
