"""One prompt's cross-attention maps as word columns aligned across branches (no torch), for side-by-side grids.

The columns are the customized model's concept and context words (CLIP tokens merged into words by
``maps.split_words``). Each branch's map of a word is the sum of its tokens' maps, normalised to max 1: the
customized model's own tokens, the baseline's partner tokens (``ref_index``: ``<new1>`` and ``cat`` both pair with
the baseline's ``cat``), and, for any other branch (AlignIT), its word of the same text and the same partners.
Each map's divergence from the baseline's map of the column is 1 − Pearson r (``maps.one_minus_pearson``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from .. import store as st
from ..schema import BASELINE
from .maps import one_minus_pearson, split_words

SHOWN_ROLES = ("concept", "context")


@dataclass
class WordGrid:
    """Word columns of one prompt: ``maps[branch]`` (word, y, x), NaN where a branch has no such word;
    ``one_minus_pearson[branch]`` (word,) against the baseline row (NaN for the baseline itself)."""

    prompt_text: str
    words: list[str]
    roles: list[str]
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    one_minus_pearson: dict[str, np.ndarray] = field(default_factory=dict)


def branch_words(tree: xr.DataTree, branch: str, prompt: int) -> list[tuple[str, list[int], tuple[int, ...], str]]:
    """(text, token indices, baseline partner indices, role) of each concept/context word of one prompt."""
    lab = st.token_labels(tree, branch).isel(prompt=prompt).load()
    strs = [str(s) for s in lab.token_str.values]
    roles, ref = lab.role.values.astype(object), lab.ref_index.values.astype(np.int64)
    out = []
    for text, idx in split_words(strs):
        if roles[idx[0]] in SHOWN_ROLES:
            partners = tuple(sorted({int(ref[i]) for i in idx if ref[i] >= 0}))
            out.append((text, idx, partners, str(roles[idx[0]])))
    return out


def word_map(maps: np.ndarray, idx: Iterable[int]) -> np.ndarray:
    """The sum of the maps of tokens ``idx`` (token, y, x → y, x), divided by its max (all-zero stays 0)."""
    total = maps[list(idx)].astype(np.float64).sum(axis=0)
    top = np.nanmax(total) if total.size else 0.0
    return total / top if top > 0 else total


def matching_words(
    words: Sequence[tuple[str, list[int], tuple[int, ...], str]],
    reference: Iterable[tuple[str, list[int], tuple[int, ...], str]],
) -> list[list[int] | None]:
    """For each reference word (text, _, partners, _), the token indices of ``words``' first unused word of the
    same text and partners (else of the same text), or None."""
    used, out = set(), []
    for text, _, partners, _ in reference:
        pick = next((j for j, w in enumerate(words) if j not in used and (w[0], w[2]) == (text, partners)), None)
        if pick is None:
            pick = next((j for j, w in enumerate(words) if j not in used and w[0] == text), None)
        if pick is not None:
            used.add(pick)
        out.append(None if pick is None else words[pick][1])
    return out


def attention_words(
    tree: xr.DataTree, model: str, branches: list[str], prompt: int = 0, max_words: int = 10
) -> WordGrid:
    """The word grid of prompt position ``prompt`` with columns from ``model``'s words (at most ``max_words``)
    and one row per branch of ``branches`` that has an ``attention`` node (the baseline first)."""
    columns = branch_words(tree, model, prompt)[:max_words]
    lab = st.token_labels(tree, model).isel(prompt=prompt)
    grid = WordGrid(str(lab.prompt_text.values), [c[0] for c in columns], [c[3] for c in columns])
    for branch in branches:
        maps = tree[f"{branch}/attention"].to_dataset()["map"].isel(prompt=prompt).values
        if branch == BASELINE:
            picks = [list(c[2]) or None for c in columns]
        elif branch == model:
            picks = [c[1] for c in columns]
        else:
            picks = matching_words(branch_words(tree, branch, prompt), columns)
        nan = np.full(maps.shape[1:], np.nan)
        grid.maps[branch] = np.stack([nan if p is None else word_map(maps, p) for p in picks]) if picks else nan[:0]
    base = grid.maps.get(BASELINE)
    for branch, m in grid.maps.items():
        if base is None or branch == BASELINE or not len(m):
            grid.one_minus_pearson[branch] = np.full(len(m), np.nan)
            continue
        a, b = (xr.DataArray(x, dims=("word", "y", "x")) for x in (m, base))
        with np.errstate(invalid="ignore", divide="ignore"):
            grid.one_minus_pearson[branch] = one_minus_pearson(a, b).values
    return grid
