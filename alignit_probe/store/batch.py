"""One recorded batch of prompts as labeled xarray groups, and the per-token coordinates of a branch. Torch-free:
the writer takes batches, whoever made them (``record``, merges, AlignIT)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr


@dataclass
class Batch:
    """One recorded batch of prompts: labeled xarray groups keyed by their path under the model's branch."""

    coords: xr.Dataset
    groups: dict[str, xr.Dataset]


def token_coords(tokenized: list, start: int, n_tokens: int | None = None) -> xr.Dataset:
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


def select_prompts(batch: Batch, which: np.ndarray | Sequence[int]) -> Batch:
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
