"""Classifier-free guidance, made explicit: which rows of a UNet batch are the conditional branch.

diffusers' pipelines concatenate ``[negative_prompt_embeds, prompt_embeds]`` when guidance is on, and hand the same
tensor to every attn2 layer at every step. Interventions never infer the split from the batch size: the caller
registers the conditional embeddings it passes to the pipeline (``prompt_embeds=``), and ``CondRows.rows(ehs)``
returns the rows of ``encoder_hidden_states`` that hold them, by exact content, cached per tensor so the comparison
runs once per pipeline call, not once per layer and step. A cached tensor is kept referenced, so that its memory
cannot be reused by another tensor that would then pass for it; ``CondRows.key(ehs)`` names it for other per-tensor
caches.
"""

from __future__ import annotations

import torch


class CondRows:
    def __init__(self, cond: torch.Tensor):
        """``cond``: the conditional encoder states handed to the pipeline, (prompt, token, channel)."""
        self.cond = cond.detach()
        self._cache: dict[tuple, tuple[list[int], list[int], torch.Tensor]] = {}
        self._index: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def key(ehs: torch.Tensor) -> tuple:
        """What identifies one encoder-states tensor, unchanged, while it is referenced."""
        return (ehs.data_ptr(), tuple(ehs.shape), ehs._version, ehs.device, ehs.dtype)

    def match(self, ehs: torch.Tensor) -> tuple[list[int], list[int]]:
        """(rows of ``ehs`` that are conditional, index of the registered prompt each row holds)."""
        key = self.key(ehs)
        hit = self._cache.get(key)
        if hit is None:
            cond = self.cond.to(device=ehs.device, dtype=ehs.dtype)
            rows, which = [], []
            if ehs.shape[1:] == cond.shape[1:]:
                for r in range(ehs.shape[0]):
                    for p in range(cond.shape[0]):
                        if torch.equal(ehs[r], cond[p]):
                            rows.append(r)
                            which.append(p)
                            break
            hit = self._cache[key] = (rows, which, ehs)  # ehs kept: its address names no other tensor
            if len(self._cache) > 8:
                self._cache.pop(next(iter(self._cache)))
        return hit[0], hit[1]

    def index(self, rows: list[int], device: torch.device) -> torch.Tensor:
        """``rows`` as an index tensor on ``device``, made once for every layer that shares this object (on a GPU,
        each one made is a copy from the host)."""
        key = (tuple(rows), device)
        if key not in self._index:
            self._index[key] = torch.tensor(rows, device=device)
        return self._index[key]
