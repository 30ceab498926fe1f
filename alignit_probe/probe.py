"""The recording job as one call: tokenize with role alignment, record every stage of both models batch by batch,
stream into a store. The CLI, notebooks and reports use this public API."""

from __future__ import annotations

import sys
from dataclasses import asdict

import numpy as np

from . import jobs
from .concepts import Concept, modifier_ids
from .embeddings import embedding_diagnostics
from .record import record_batch, tokenize_table
from .sites import attn2_paths
from .writer import StoreWriter


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
                 clip_skip=None, seed=0, store_dtype=np.float32, progress=True, command=None, extra=None,
                 shard: tuple[int, int] | None = None, drop_padding=False, job: dict | None = None,
                 min_tokens: int = 0):
    """Record baseline and customized model on ``prompts`` into the store at ``out``. Returns the store path.

    Batches stream into ``<out>.partial``; rerunning the same job after a crash resumes it (``jobs`` says what
    "the same job" is; ``job`` adds options of ``extra`` that must match too). ``shard=(i, n)`` records shard i of n
    (``jobs.shard_range``). ``drop_padding`` keeps the first T token positions, T the longest tokenized prompt of the
    whole prompt set, or ``min_tokens`` if more (what branches added by ``extra`` fill). ``extra(writer, customs,
    bases)`` may add branches (AlignIT) before the store is committed; ``customs``/``bases`` are
    ``record.TokenTable`` s of this shard's prompts."""
    span = jobs.shard_range(len(prompts), batch_size, shard)
    custom_tp, base_tp, warnings = tokenize_table(prompts, span, pair.custom, pair.baseline.tokenizer, concepts)
    n_full = pair.custom.tokenizer.model_max_length
    n_tokens = n_full
    if drop_padding:
        kept = jobs.kept_tokens(prompts, pair.custom, pair.baseline.tokenizer, concepts)
        n_tokens = min(n_full, max(kept, min_tokens))
    device, dtype = pair.custom.unet.device, pair.custom.unet.dtype
    options = dict(batch_size=batch_size, clip_skip=clip_skip, seed=seed, store_dtype=np.dtype(store_dtype).name,
                   drop_padding=bool(drop_padding), n_tokens=n_tokens, dtype=str(dtype).replace("torch.", ""),
                   device_type=device.type, **(job or {}))
    vers = versions()
    attrs = dict(concepts=[asdict(c) for c in concepts], versions=vers, command=command,
                 warnings=warnings + list(pair.warnings), n_prompts=len(prompts), options=options,
                 n_tokens=n_tokens, n_tokens_full=n_full, shard=jobs.shard_name(shard),
                 prompt_range=[span.start, span.stop],
                 fingerprint=jobs.job_fingerprint(pair, concepts, prompts, options, vers))
    # writes overlap the next batch's compute in a thread where a GPU computes; on CPU that thread would only take
    # cores from torch's own threads, so they write in between batches
    with StoreWriter(out, overwrite=overwrite, attrs=attrs, chunk_prompts=min(batch_size, len(span)),
                     n_prompts=len(span), n_tokens=n_tokens if drop_padding else None, first_prompt=span.start,
                     background=device.type != "cpu") as writer:
        models = [("baseline", pair.baseline, base_tp), ("custom", pair.custom, custom_tp)]
        m_attrs = {}
        for name, pipe, _ in models:
            m_attrs[name] = model_attrs(pair, name, device, dtype, seed, clip_skip)
            m_attrs[name]["warnings"] = m_attrs[name]["warnings"] + warnings
            m_attrs[name]["sites"] = attn2_paths(pipe.unet)
        done = min(writer.written(name) for name, _, _ in models)
        bar = progress_bar(len(span), "record", progress)
        bar.update(done)
        for start in range(span.start + done, span.stop, batch_size):
            stop = min(start + batch_size, span.stop)
            for name, pipe, tps in models:
                if span.start + writer.written(name) < stop:
                    batch = record_batch(pipe, tps[start:stop], start, clip_skip=clip_skip, store_dtype=store_dtype,
                                         n_tokens=n_tokens if drop_padding else None)
                    writer.append(name, batch, m_attrs[name])
            bar.update(stop - start)
        bar.close()
        ids = sorted({i for c in concepts for i in modifier_ids(pair.custom, c)})
        writer.put("custom/embedding", embedding_diagnostics(pair.custom, pair.baseline, ids))
        if extra is not None:
            extra(writer, custom_tp, base_tp)
        return writer.commit()
