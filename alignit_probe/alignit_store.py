"""The ``alignit`` branch of a store: AlignIT's infused K/V per prompt, with token labels aligned to the baseline."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import xarray as xr

from .record import Batch, token_coords


def alignit_batch(akv, start: int, store_dtype=np.float32) -> Batch:
    coords = token_coords([p.tokens for p in akv.plans], start)
    index = {"prompt": coords.prompt.values, "token": coords.token.values}
    ptc = ("prompt", "token", "channel")
    groups = {}
    for path, (k, v) in akv.kv.items():
        groups[f"kv/{path}"] = xr.Dataset(
            {"key": (ptc, k.float().cpu().numpy().astype(store_dtype)),
             "value": (ptc, v.float().cpu().numpy().astype(store_dtype))},
            coords=index, attrs={"site": path},
        )
    return Batch(coords, groups)


def write_alignit_branch(writer, pair, concepts, prompts, options, *, batch_size=8, store_dtype=np.float32,
                         progress=None, extra_attrs=None) -> list[str]:
    """Compute AlignIT K/V batch by batch and append them as the ``alignit`` branch. Returns warnings."""
    from .generate import alignit_kv
    from .sites import attn2_paths

    warnings = []
    attrs = {"model_id": pair.baseline_id, "custom_ids": pair.custom_ids, "method": "alignit",
             "options": asdict(options), "sites": attn2_paths(pair.custom.unet), "warnings": warnings,
             **(extra_attrs or {})}
    for i in range(0, len(prompts), batch_size):
        akv = alignit_kv(pair, concepts, prompts[i : i + batch_size], options)
        warnings += akv.warnings
        writer.append("alignit", alignit_batch(akv, i, store_dtype), attrs)
        if progress is not None:
            progress.update(len(prompts[i : i + batch_size]))
    return warnings
