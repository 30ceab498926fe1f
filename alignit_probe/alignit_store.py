"""The ``alignit`` branch of a store: AlignIT's infused K/V per prompt, with token labels aligned to the baseline."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import xarray as xr

from .record import Batch, to_host, token_coords


def alignit_batch(akv, start: int, store_dtype=np.float32) -> Batch:
    coords = token_coords([p.tokens for p in akv.plans], start)
    index = {"prompt": coords.prompt.values, "token": coords.token.values}
    ptc = ("prompt", "token", "channel")
    groups = {}
    for path, (k, v) in akv.kv.items():
        groups[f"kv/{path}"] = xr.Dataset(
            {"key": (ptc, to_host(k, store_dtype)), "value": (ptc, to_host(v, store_dtype))},
            coords=index, attrs={"site": path},
        )
    return Batch(coords, groups)


def alignit_length(pair, concepts, prompts, options) -> int:
    """The most token positions an AlignIT sequence of ``prompts`` fills (start and end token included): what
    ``--drop-padding`` must keep for the alignit branch. Tokenization only, no model."""
    from .alignit import alignit_plan, tokenize_dummies
    from .concepts import tokenize_pair

    dummies = tokenize_dummies(pair.custom, pair.baseline.tokenizer, concepts, options.template)
    n = 1
    for p in prompts:
        plan = alignit_plan(*tokenize_pair(p, pair.custom, pair.baseline.tokenizer, concepts), dummies)
        n = max(n, sum(r != "padding" for r in plan.tokens.role))
    return n


def write_alignit_branch(writer, pair, concepts, prompts, options, *, span: range | None = None, batch_size=8,
                         store_dtype=np.float32, progress=None, extra_attrs=None) -> list[str]:
    """Compute AlignIT K/V batch by batch for ``prompts[span]`` (default all) and append them as the ``alignit``
    branch, continuing after what ``writer`` already holds (a resumed job). Returns this run's warnings, which are
    also added to the branch's ``warnings`` attribute (prompts numbered globally)."""
    from .generate import alignit_kv
    from .sites import attn2_paths

    span = range(len(prompts)) if span is None else span
    warnings = []
    attrs = {"model_id": pair.baseline_id, "custom_ids": pair.custom_ids, "method": "alignit",
             "options": asdict(options), "sites": attn2_paths(pair.custom.unet), "warnings": [],
             **(extra_attrs or {})}
    done = writer.written("alignit")
    if progress is not None:
        progress.update(done)
    for i in range(span.start + done, span.stop, batch_size):
        j = min(i + batch_size, span.stop)
        akv = alignit_kv(pair, concepts, prompts[i:j], options, first=i)
        warnings += akv.warnings
        writer.append("alignit", alignit_batch(akv, i, store_dtype), attrs)
        if progress is not None:
            progress.update(j - i)
    writer.add_warnings("alignit", warnings)
    return warnings
