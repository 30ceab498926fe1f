"""Summaries shared by every stage: partner gathering, per-role means over tokens, bootstrap CIs over prompts.
Pure numpy (the read side imports no torch)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

MIN_CI = 3  # below this many prompts a bootstrap CI says nothing: tables and reports show the value alone


def fmt(x: float | None, digits: int = 4) -> str:
    """``digits`` decimals; small nonzero values with ``digits - 1`` significant digits instead of 0.0000; "—"
    for no value."""
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:.{max(1, digits - 1)}g}" if 0 < abs(x) < 10 ** -(digits - 1) else f"{x:.{digits}f}"


def gather_partners(b: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``b[..., ref[..., t], *rest]`` in float64, NaN where ``ref < 0``.

    ``ref`` (..., token) holds partner positions along ``b``'s axis ``ref.ndim - 1``; ``b`` has ``ref``'s leading
    axes, its own token axis, then any trailing axes (``channel``; ``y, x``)."""
    tail = b.shape[ref.ndim :]
    idx = np.clip(ref, 0, None).astype(np.int64).reshape(ref.shape + (1,) * len(tail))
    out = np.take_along_axis(b.astype(np.float64), np.broadcast_to(idx, ref.shape + tail), axis=ref.ndim - 1)
    out[ref < 0] = np.nan
    return out


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float, int]:
    """Mean and percentile-bootstrap CI of the mean over prompts (NaNs dropped)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    if v.size == 1:
        return float(v[0]), float(v[0]), float(v[0]), 1
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(v.mean()), float(lo), float(hi), int(v.size)


def role_means(dist: npt.ArrayLike, role: npt.ArrayLike, roles: Iterable[str]) -> dict[str, np.ndarray]:
    """Per prompt: the mean over the tokens (last axis) of each role (NaN where a prompt has none). ``dist`` and
    ``role`` are array-likes of the same shape (prompt, token)."""
    d = np.asarray(dist)
    r = np.asarray(role).astype(object)
    out = {}
    for name in roles:
        mask = (r == name) & np.isfinite(d)
        with np.errstate(invalid="ignore"):
            out[name] = np.where(mask, d, 0).sum(-1) / mask.sum(-1)
    return out
