"""What ``capture_attention`` aggregates: ``AttentionSlices`` (aggregation, layers, extra maps) and the attn2 layers
it captures (all, given paths, or DAAM's default choice); see ``capture.attention``'s docstring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ProbeError
from ..schema import block_of
from . import sites

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

__all__ = ["AGGREGATIONS", "AttentionSlices", "daam_layers", "select_layers"]

AGGREGATIONS = ("bilinear", "daam")


@dataclass(frozen=True)
class AttentionSlices:
    """How maps are aggregated (``aggregation``: bilinear/daam; ``layers``: None = all attn2 layers, attn2 paths,
    or ``"daam"``) and optional extra maps, all streaming sums (see module docstring)."""

    per_layer: bool = False
    per_head: bool = False
    step_windows: Sequence[tuple[int, int]] | None = None
    native: bool = False
    aggregation: str = "bilinear"
    layers: Sequence[str] | str | None = None

    def __post_init__(self):
        windows = tuple((int(a), int(b)) for a, b in (self.step_windows or ()))
        if any(b <= a or a < 0 for a, b in windows):
            raise ProbeError(f"bad step window in {windows}", "give [start, stop) pairs with 0 <= start < stop")
        object.__setattr__(self, "step_windows", windows)
        if self.aggregation not in AGGREGATIONS:
            raise ProbeError(f"unknown aggregation {self.aggregation!r}", "use " + " or ".join(AGGREGATIONS))
        if isinstance(self.layers, str):
            if self.layers != "daam":
                raise ProbeError(f"layers={self.layers!r} is not a list of attn2 paths", "pass a list, or 'daam'")
        elif self.layers is not None:
            layers = tuple(str(p) for p in self.layers)
            if not layers:
                raise ProbeError("no attention-map layers given", "pass attn2 paths, 'daam', or None for all")
            object.__setattr__(self, "layers", layers)

    def check_steps(self, steps: int) -> None:
        """Every step window within the ``steps`` denoising steps (a window beyond them would sum nothing)."""
        for a, b in self.step_windows or ():
            if b > steps:
                raise ProbeError(
                    f"step window {a}:{b} ends after the last of the {steps} denoising steps",
                    f"give windows within 0:{steps}, or more --steps",
                )

    @property
    def layer_selection(self) -> str:
        """``all``, ``daam`` or ``given``."""
        return "all" if self.layers is None else "daam" if self.layers == "daam" else "given"


def daam_layers(unet: UNet2DConditionModel) -> list[str]:
    """The attn2 layers DAAM aggregates by default: outside the mid block, and not 8× downsampled from the latent
    grid at the UNet's default sample size (see module docstring)."""
    size = unet.config.sample_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    sides = sites.site_resolutions(unet)
    return [p for p in sites.attn2_paths(unet) if block_of(p) != "mid" and size // sides[p] != 8]


def select_layers(unet: UNet2DConditionModel, layers: Sequence[str] | str | None) -> list[str]:
    """attn2 paths to capture, in the UNet's module order (``AttentionSlices.layers``)."""
    if layers is None:
        return sites.attn2_paths(unet)
    if layers == "daam":
        return daam_layers(unet)
    return sites.select_sites(unet, layers=list(layers))
