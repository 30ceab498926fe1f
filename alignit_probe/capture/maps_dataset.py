"""The captured maps as one ``xr.Dataset`` (``AttentionCollector.to_dataset``): variables, coords and attributes
built from a collector's running sums, which it reads through public attributes only (``accumulators()``,
``layers``, ``heads``, ``native_hw``, ``latent_hw``, ``slices``, counters)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..errors import ProbeError

SPATIAL = ("y", "x")  # a map's spatial dimensions

__all__ = ["maps_dataset", "UPSAMPLING", "REDUCTION"]

UPSAMPLING = {
    "bilinear": "bilinear (align_corners=False) of the head mean, to the latent grid",
    "daam": "bicubic (align_corners=False) of each head's map to the latent grid, clamped at 0, then the head mean",
}
REDUCTION = "sum over layers and steps of head-mean softmax(Q K^T * scale) of the conditional rows"


def normalize(da: xr.DataArray, how: str | None = "max", dims: Sequence[str] = SPATIAL) -> xr.DataArray:
    """Each map divided by its max (``"max"``) or its sum (``"sum"``) over ``dims``; all-zero maps stay 0."""
    if how is None:
        return da
    if how not in ("max", "sum"):
        raise ValueError(f"normalize must be 'max', 'sum' or None, not {how!r}")
    scale = da.max(dims) if how == "max" else da.sum(dims)
    return (da / scale.where(scale != 0, 1)).assign_attrs(da.attrs, normalization=how)


def _variables(collector) -> dict:
    """name → (dims, array[, attrs]) of every running sum; ``map`` starts as a copy of ``map_raw``."""
    data = {}
    for name, acc in collector.accumulators().items():
        arr = acc.detach().cpu().numpy().copy()
        if name == "map_raw":
            data[name] = (("prompt", "token", "y", "x"), arr)
            data["map"] = (("prompt", "token", "y", "x"), arr)
        elif name in ("map_layer", "map_window", "map_head"):
            mid = {"map_layer": ("layer",), "map_window": ("window",), "map_head": ("layer", "head")}[name]
            data[name] = (("prompt", *mid, "token", "y", "x"), arr)
        else:
            k = int(name.rsplit("_", 1)[1])
            h, w = collector.native_hw[k]
            dims = ("prompt", "head", "token", f"y_{h}", f"x_{w}")
            data[name] = (dims if "head" in name else dims[:1] + dims[2:], arr, {"layer": collector.layers[k]})
    H = max(collector.heads)
    for k, n in enumerate(collector.heads):  # heads a layer does not have
        for name, sel in (("map_head", (slice(None), k, slice(n, None))), (f"map_native_head_{k}", np.s_[:, n:])):
            if n < H and name in data:
                data[name][1][sel] = np.nan
    return data


def maps_dataset(
    collector: Any,  # a capture.attention.AttentionCollector (that module imports this one)
    token_strings: Sequence[str] | Sequence[Sequence[str]] | None = None,
    normalize_maps: str | None = "max",
) -> xr.Dataset:
    """The collector's maps as an ``xr.Dataset`` (see ``AttentionCollector.to_dataset``)."""
    if not collector.accumulators():
        raise ProbeError(
            "no cross-attention was captured",
            "call the pipeline inside the block with prompt_embeds= the tensor given to capture_attention",
        )
    lh, lw = collector.latent_hw
    P, L, H, T = collector.prompts, len(collector.layers), max(collector.heads), collector.tokens
    coords = {"prompt": range(P), "token": range(T), "y": range(lh), "x": range(lw)}
    data = _variables(collector)
    order = ["map", "map_raw", "map_layer", "map_window", "map_head"]
    order += [f"map_native{h}_{k}" for k in range(L) for h in ("", "_head")]
    ds = xr.Dataset({k: xr.Variable(*data[k]) for k in order if k in data}, coords=coords)
    if "map_layer" in ds or "map_head" in ds:
        ds = ds.assign_coords(layer=list(collector.layers))
    if "map_head" in ds or any("native_head" in k for k in ds):
        ds = ds.assign_coords(head=range(H))
    slices = collector.slices
    if "map_window" in ds:
        ws = slices.step_windows
        ds = ds.assign_coords(
            window=[f"{a}:{b}" for a, b in ws],
            window_start=("window", [a for a, _ in ws]),
            window_stop=("window", [b for _, b in ws]),
        )
    for name in list(ds.data_vars):
        if name != "map_raw":
            spatial = [d for d in ds[name].dims if d[0] in "yx"]
            ds[name] = normalize(ds[name], normalize_maps, spatial).assign_attrs(ds[name].attrs)
    if token_strings is not None:
        per_prompt = len(token_strings) > 0 and not isinstance(token_strings[0], str)
        pad = lambda ts: [*ts[:T], *[""] * (T - len(ts))]
        ds = ds.assign_coords(
            token_text=(("prompt", "token"), [pad(list(t)) for t in token_strings])
            if per_prompt
            else ("token", pad(list(token_strings)))
        )
    ds.attrs.update(
        steps=collector.steps,
        unet_calls=collector.unet_calls,
        layers=list(collector.layers),
        layer_selection=slices.layer_selection,
        normalization=str(normalize_maps),
        aggregation=slices.aggregation,
        upsampling=UPSAMPLING[slices.aggregation],
        reduction=REDUCTION,
        latent_size=[lh, lw],
        heads=list(collector.heads),
        processors=list(collector.processors),
        calls_per_layer=list(collector.calls),
    )
    return ds
