"""The paper's evaluation of generated images: CLIP-T (image–prompt) and CLIP-I (image–reference images) with a
local CLIP checkpoint. ``ClipScorer`` keeps the model loaded; ``clip_scores`` is the one-call form. Torch loads on
first use of either."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clip_score import ClipScorer, clip_scores

__all__ = ["ClipScorer", "clip_scores"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import clip_score

        return getattr(clip_score, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
