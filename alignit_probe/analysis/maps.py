"""Pure functions on attention-map DataArrays: CLIP word maps, and divergences between two models' maps.

Every function reduces over the spatial dims by *name* (``("y", "x")`` by default; pass e.g.
``dims=("y_8", "x_8")`` for native-resolution maps) and is vectorized over every other dim, so two
``(prompt, token, y, x)`` maps give a ``(prompt, token)`` result, ``(prompt, layer, token, y, x)`` maps a
``(prompt, layer, token)`` one. Inputs are aligned exactly (same coords) and computed in float64.

Divergences (0 = same map):

* ``one_minus_pearson``: 1 − Pearson r of the pixel values, in [0, 2]; NaN where a map is constant.
* ``jensen_shannon``: maps normalized to sum 1, JS divergence in bits (base 2), in [0, 1], symmetric;
  NaN where a map sums to 0. Maps must be non-negative (attention maps are).
* ``one_minus_iou``: 1 − IoU of the two maps' binary masks, DAAM's convention (``expand_image(...,
  threshold=level)``): each map is min–max normalized over the spatial dims, (m − min) / (max − min), and a pixel is
  in the mask when that is > ``level`` (default 0.5). Normalizing the range, not only the scale, is what makes the
  masks say something about real attention maps, which are flat (min/max 0.7–0.9): thresholding at ``level`` × max
  kept every pixel of both maps and gave IoU 1 almost always. ``iou`` is the similarity itself (1 = same mask). A
  constant map (max == min, all-zero included) has an empty mask; two empty masks give NaN.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import xarray as xr

from ..capture.maps_dataset import SPATIAL, normalize
from ..text.byte_level import readable

SPECIAL_TOKENS = frozenset({"<|startoftext|>", "<|endoftext|>", ""})
# Added placeholder tokens (textual inversion, Custom Diffusion's <new1>) and their multi-vector pieces <new1>_1.
PLACEHOLDER = re.compile(r"^<[^<>|\s]+>(_\d+)?$")


def _pair(a: xr.DataArray, b: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    a, b = xr.align(a, b, join="exact")
    return a.astype("float64"), b.astype("float64")


def one_minus_pearson(a: xr.DataArray, b: xr.DataArray, dims: Sequence[str] = SPATIAL) -> xr.DataArray:
    """1 − Pearson correlation of ``a`` and ``b`` over ``dims``."""
    a, b = _pair(a, b)
    am, bm = a - a.mean(dims), b - b.mean(dims)
    r = (am * bm).sum(dims) / np.sqrt((am * am).sum(dims) * (bm * bm).sum(dims))
    return (1.0 - r).rename("one_minus_pearson")


def jensen_shannon(a: xr.DataArray, b: xr.DataArray, dims: Sequence[str] = SPATIAL) -> xr.DataArray:
    """Jensen–Shannon divergence (bits) of ``a`` and ``b``, each normalized to sum 1 over ``dims``."""
    a, b = _pair(a, b)
    p, q = a / a.sum(dims), b / b.sum(dims)
    m = 0.5 * (p + q)

    def kl(u: xr.DataArray) -> xr.DataArray:  # KL(u || m), 0 · log 0 = 0
        return xr.where(u > 0, u * np.log2(u.where(u > 0) / m.where(u > 0)), 0.0).sum(dims)

    js = 0.5 * (kl(p) + kl(q))
    js = js.where(p.notnull().all(dims) & q.notnull().all(dims))  # NaN for maps that sum to 0
    return js.clip(0.0, 1.0).rename("jensen_shannon")


def minmax(a: xr.DataArray, dims: Sequence[str] = SPATIAL) -> xr.DataArray:
    """(a − min) / (max − min) over ``dims``; NaN for constant maps."""
    lo, hi = a.min(dims), a.max(dims)
    span = hi - lo
    return (a - lo) / span.where(span > 0)


def _mask(a: xr.DataArray, level: float, dims: Sequence[str]) -> xr.DataArray:
    return minmax(a, dims) > level  # NaN (constant map) > level is False: an empty mask


def _check_level(level: float) -> None:
    if not 0.0 <= level < 1.0:
        raise ValueError(f"level must be in [0, 1), not {level!r} (a fraction of each map's min–max range)")


def iou(a: xr.DataArray, b: xr.DataArray, level: float = 0.5, dims: Sequence[str] = SPATIAL) -> xr.DataArray:
    """Intersection over union of the masks (a − min a)/(max a − min a) > ``level`` and the same of ``b``
    (a similarity: 1 = same mask; NaN when both masks are empty)."""
    _check_level(level)
    a, b = _pair(a, b)
    ma, mb = _mask(a, level, dims), _mask(b, level, dims)
    union = (ma | mb).sum(dims)
    return ((ma & mb).sum(dims) / union.where(union > 0)).rename("iou")


def one_minus_iou(a: xr.DataArray, b: xr.DataArray, level: float = 0.5, dims: Sequence[str] = SPATIAL) -> xr.DataArray:
    """1 − ``iou``: the thresholded-mask divergence (0 = same mask)."""
    return (1.0 - iou(a, b, level, dims)).rename("one_minus_iou")


def divergences(a: xr.DataArray, b: xr.DataArray, level: float = 0.5, dims: Sequence[str] = SPATIAL) -> xr.Dataset:
    """All three divergences as one Dataset (variables ``one_minus_pearson``, ``jensen_shannon``, ``one_minus_iou``)."""
    out = xr.merge([one_minus_pearson(a, b, dims), jensen_shannon(a, b, dims), one_minus_iou(a, b, level, dims)])
    out.attrs.update(iou_level=level, iou_mask="minmax > level", js_base=2, dims=list(dims))
    return out


def split_words(tokens: Sequence[str]) -> list[tuple[str, list[int]]]:
    """CLIP tokens → words, as (text, token indices).

    A word ends at a token ending with ``</w>``, its text as written (byte-level spelling decoded: ``東京``);
    placeholder tokens (``<new1>``) and multi-vector pieces (``<new1>_1``) are words of their own; start/end/padding
    tokens (``<|startoftext|>``, ``<|endoftext|>``) belong to no word.
    """
    words: list[tuple[str, list[int]]] = []
    current: list[int] = []

    def flush() -> None:
        if current:
            words.append((readable("".join(tokens[i] for i in current)), current.copy()))
            current.clear()

    for i, tok in enumerate(tokens):
        if tok in SPECIAL_TOKENS:
            flush()
        elif PLACEHOLDER.match(tok):
            flush()
            words.append((tok, [i]))
        else:
            current.append(i)
            if tok.endswith("</w>"):
                flush()
    flush()
    return words


def word_maps(
    maps: xr.DataArray,
    token_strings: Sequence[str] | Sequence[Sequence[str]] | None = None,
    *,
    how: str | None = "max",
    dims: Sequence[str] = SPATIAL,
) -> xr.DataArray:
    """Token maps → word maps: the maps of a word's sub-tokens are summed, then renormalized (``how``).

    ``maps`` has a ``token`` dim (e.g. ``ds["map"]``, which weighs sub-tokens equally, or ``ds["map_raw"]``,
    which weighs them by attention mass). ``token_strings``: one list of token strings for every prompt, one list
    per prompt, or None to read the ``token_text`` coord. The result has a ``word`` dim in place of ``token``
    (padded with NaN up to the longest prompt), and coords ``word_text`` and ``word_tokens`` (e.g. ``"4,5"``).
    """
    if token_strings is None:
        if "token_text" not in maps.coords:
            raise ValueError(
                "pass token_strings, or maps with a token_text coord (collector.to_dataset(token_strings=))"
            )
        token_strings = maps.coords["token_text"].values.tolist()
    per_prompt = len(token_strings) > 0 and not isinstance(token_strings[0], str)
    maps = maps.drop_vars([c for c in ("token_text",) if c in maps.coords])
    if not per_prompt:
        return _word_maps_one(maps, list(token_strings), how, dims)
    if "prompt" not in maps.dims or maps.sizes["prompt"] != len(token_strings):
        raise ValueError("one token list per prompt needs maps with a prompt dim of the same length")
    parts = [_word_maps_one(maps.isel(prompt=p), list(t), how, dims) for p, t in enumerate(token_strings)]
    n = max(part.sizes["word"] for part in parts)
    labels = {
        c: [part[c].values.tolist() + [""] * (n - part.sizes["word"]) for part in parts]
        for c in ("word_text", "word_tokens")
    }
    parts = [part.drop_vars(list(labels)).reindex(word=np.arange(n)) for part in parts]
    out = xr.concat(parts, dim="prompt").transpose(*[("word" if d == "token" else d) for d in maps.dims])
    return out.assign_coords({c: (("prompt", "word"), v) for c, v in labels.items()})


def _word_maps_one(maps: xr.DataArray, tokens: list[str], how: str | None, dims: Sequence[str]) -> xr.DataArray:
    words = split_words(tokens)
    stacked = [maps.isel(token=idx).sum("token") for _, idx in words]
    out = xr.concat(stacked, dim="word") if stacked else maps.isel(token=[]).rename(token="word")
    out = normalize(out, how, dims).transpose(*[("word" if d == "token" else d) for d in maps.dims])
    return out.assign_coords(
        word=np.arange(len(words)),
        word_text=("word", [w for w, _ in words]),
        word_tokens=("word", [",".join(map(str, idx)) for _, idx in words]),
    ).rename("word_map")
