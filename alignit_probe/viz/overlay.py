"""Attention maps drawn over their images: one figure per prompt and model (matplotlib imported when drawing)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ProbeError
from ..text.byte_level import token_texts
from .fonts import fallback_fonts

if TYPE_CHECKING:
    import xarray as xr
    from PIL import Image


def plot_overlay(
    image: Image.Image | np.ndarray,
    maps: xr.DataArray,
    tokens: Sequence[int | str],
    path: str | os.PathLike,
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> str | os.PathLike:
    """Save the image and one overlay per token (index, or text of the ``token_text``/``word_text`` coord).

    ``image``: PIL image or (H, W, 3) array; ``maps``: a DataArray (token|word, y, x) of one prompt.
    """
    from matplotlib.figure import Figure  # imported when drawing, never at import time
    from PIL import Image

    img = np.asarray(image, dtype=np.float32)
    img = img / 255.0 if img.max() > 1.5 else img
    dim = "word" if "word" in maps.dims else "token"
    if "prompt" in maps.dims:
        if maps.sizes["prompt"] != 1:
            raise ProbeError("plot_overlay draws one prompt", "select it first: maps.isel(prompt=i)")
        maps = maps.isel(prompt=0)
    texts = next((maps.coords[c].values.tolist() for c in ("word_text", "token_text") if c in maps.coords), None)
    labels = None if texts is None else texts if "word_text" in maps.coords else token_texts(texts)
    with fallback_fonts():  # token labels in any script
        fig = Figure(figsize=(2.5 * (len(tokens) + 1), 2.8))
        axes = fig.subplots(1, len(tokens) + 1, squeeze=False)[0]
        axes[0].imshow(img)
        axes[0].set_title("image")
        for ax, tok in zip(axes[1:], tokens):
            j = (
                next((j for j, t in enumerate(texts or []) if tok in (t, labels[j]) or t == f"{tok}</w>"), None)
                if isinstance(tok, str)
                else int(tok)
            )
            if j is None:
                raise ProbeError(
                    f"no token or word {tok!r} in the maps", "pass an index, or maps with token_text/word_text"
                )
            m = np.nan_to_num(maps.isel({dim: j}).values.astype(np.float32))
            m = np.asarray(Image.fromarray(m, mode="F").resize(img.shape[1::-1], Image.BILINEAR))
            ax.imshow(img)
            ax.imshow(m, cmap=cmap, alpha=alpha)
            ax.set_title(labels[j] if labels else str(tok))
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 1})
    return path


OVERLAY_TOKENS = 8  # overlays per prompt and model (the first concept and context tokens); the store has every map


def write_overlays(
    maps: dict, tokenized: dict, prompts: list[str], folder: Path, max_tokens: int = OVERLAY_TOKENS
) -> None:
    """One overlay figure per prompt and model: the image and the maps of its non-padding tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (ds, images) in maps.items():
        for k in range(len(prompts)):
            tp = tokenized[name][k]
            keep = [i for i, r in enumerate(tp.role) if r in ("concept", "context")][:max_tokens]
            m = ds["map"].isel(prompt=k).assign_coords(token_text=("token", tp.tokens))
            plot_overlay(images[k], m, keep, folder / f"{k:03d}-{name}.png")
