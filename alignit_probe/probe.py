"""The recording job as one call: tokenize with role alignment, record every stage of both models batch by batch,
stream into a store. The CLI, notebooks and reports use this public API."""

from __future__ import annotations

import sys
from dataclasses import asdict

import numpy as np

from . import store as st
from .concepts import Concept, modifier_ids, tokenize_prompts
from .embeddings import embedding_diagnostics
from .record import iter_record
from .sites import attn2_paths


def versions() -> dict:
    import diffusers
    import torch
    import transformers
    import xarray

    from . import __version__

    return {"alignit_probe": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "xarray": xarray.__version__}


def progress_bar(total: int, desc: str, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", disable=not enabled or total == 0, file=sys.stderr)


def model_attrs(pair, which: str, device, dtype, seed, clip_skip) -> dict:
    common = dict(dtype=str(dtype).replace("torch.", ""), device=str(device), seed=seed, clip_skip=clip_skip)
    if which == "baseline":
        return {"model_id": pair.baseline_id, "method": "baseline", "artifacts": [], "warnings": [], **common}
    return {"model_id": pair.baseline_id, "custom_ids": pair.custom_ids, "method": pair.method,
            "artifacts": [asdict(a) for a in pair.artifacts], "warnings": list(pair.warnings), **common}


def record_store(pair, concepts: list[Concept], prompts: list[str], out, *, overwrite=False, batch_size=8,
                 clip_skip=None, seed=0, store_dtype=np.float32, progress=True, command=None, extra=None):
    """Record baseline and customized model on ``prompts`` into the store at ``out``. Returns the store path.

    ``extra(writer, customs, bases)`` may add branches (AlignIT) before the store is committed."""
    custom_tp, base_tp, warnings = tokenize_prompts(prompts, pair.custom, pair.baseline.tokenizer, concepts)
    device, dtype = pair.custom.unet.device, pair.custom.unet.dtype
    attrs = dict(concepts=[asdict(c) for c in concepts], versions=versions(), command=command,
                 warnings=warnings + list(pair.warnings), n_prompts=len(prompts))
    with st.StoreWriter(out, overwrite=overwrite, attrs=attrs) as writer:
        for name, pipe, tps in (("baseline", pair.baseline, base_tp), ("custom", pair.custom, custom_tp)):
            m_attrs = model_attrs(pair, name, device, dtype, seed, clip_skip)
            m_attrs["warnings"] = m_attrs["warnings"] + warnings
            m_attrs["sites"] = attn2_paths(pipe.unet)
            bar = progress_bar(len(tps), f"record {name}", progress)
            for batch in iter_record(pipe, tps, batch_size=batch_size, progress=bar, clip_skip=clip_skip,
                                     store_dtype=store_dtype):
                writer.append(name, batch, m_attrs)
            bar.close()
        ids = sorted({i for c in concepts for i in modifier_ids(pair.custom, c)})
        writer.put("custom/embedding", embedding_diagnostics(pair.custom, pair.baseline, ids))
        if extra is not None:
            extra(writer, custom_tp, base_tp)
        return writer.commit()
