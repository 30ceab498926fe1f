"""The recording job as one call: tokenize with role alignment, record every stage of the baseline and of each
customized model batch by batch, add the AlignIT branches if asked, stream it all into one store.

``record_store(models, concepts, prompts, out, RecordOptions(...))``: the job's fingerprint (what makes a rerun
resume rather than start afresh) is computed here from the models, prompts and every option, so a caller cannot
resume a store recorded differently.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from ..alignit.engine import AlignITOptions, alignit_kv, options_dict, validate
from ..capture.sites import attn2_paths
from ..errors import ProbeError, ProbeWarning
from ..models.embeddings import embedding_diagnostics, learned_ids, same_text_encoders
from ..models.load import CHANGED_NOTHING, ModelPair, ModelSet
from ..models.pipes import TEXT_2, is_xl, placement, text_encoders
from ..schema import BASELINE, alignit_branch
from ..store.shards import shard_name, shard_range
from ..store.writer import StoreWriter
from ..text.concepts import Concept, check_concepts_use_added, modifier_ids
from ..text.tables import tokenize_table
from . import jobs
from .batch import as_encoded, record_batch, release_host_copies, stage_tensors
from .branches import alignit_attrs, alignit_batch, alignit_length
from .summary import record_summary

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline
    from tqdm import tqdm

    from ..text.tables import TokenTable

STORE_DTYPES = ("float32", "float16")


@dataclass
class RecordOptions:
    """What a recording job keeps, and how (all part of the job's fingerprint).

    ``shard=(i, n)`` records shard i of n (``store.shards.shard_range``); ``drop_padding`` keeps the first T token
    positions, T the longest tokenized prompt of the whole prompt set (AlignIT sequences included); ``alignit``
    adds one AlignIT branch per customized model; ``summary`` stores per-token distances to the baseline instead of
    the activations (``record.summary``)."""

    batch_size: int = 8
    clip_skip: int | None = None
    seed: int = 0
    store_dtype: str = "float32"
    drop_padding: bool = False
    shard: tuple[int, int] | None = None
    alignit: AlignITOptions | None = None
    summary: bool = False
    extra: dict = field(default_factory=dict)  # caller's options that must match on resume (e.g. generation)

    def check(self) -> None:
        if np.dtype(self.store_dtype).name not in STORE_DTYPES:
            raise ProbeError(f"store dtype {self.store_dtype} is not supported", "use float32 or float16")
        if self.clip_skip is not None and self.clip_skip < 0:
            raise ProbeError(f"clip skip {self.clip_skip} is negative", "pass --clip-skip 0 or more")


def versions() -> dict:
    import diffusers
    import torch
    import transformers

    from .. import __version__

    return {
        "alignit_probe": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "xarray": xr.__version__,
    }


def progress_bar(total: int, desc: str, enabled: bool = True) -> tqdm:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", disable=not enabled or total == 0, file=sys.stderr)


def model_attrs(
    models: ModelSet,
    name: str,
    device: str | torch.device | None,
    dtype: torch.dtype,
    seed: int,
    clip_skip: int | None,
) -> dict:
    common = dict(dtype=str(dtype).replace("torch.", ""), device=str(device), seed=seed, clip_skip=clip_skip)
    if name == BASELINE:
        return {"model_id": models.baseline_id, "method": "baseline", "artifacts": [], "warnings": [], **common}
    pair = models.pair(name)
    return {
        "model_id": models.baseline_id,
        "custom_ids": pair.custom_ids,
        "method": pair.method,
        "artifacts": [asdict(a) for a in pair.artifacts],
        "warnings": list(pair.warnings),
        **common,
    }


def as_model_set(models: ModelSet | ModelPair) -> ModelSet:
    """A ``ModelSet``, or a ``ModelPair`` as the set of its one customized model."""
    if isinstance(models, ModelPair):
        return ModelSet(models.baseline, models.baseline_id, [models])
    return models


def check_job(
    models: ModelSet | ModelPair, concepts: list[Concept], prompts: list[str], options: RecordOptions
) -> None:
    """Every option checked against the models before any work (a bad option never leaves a partial store)."""
    options.check()
    models = as_model_set(models)
    if options.clip_skip is not None:
        check_clip_skip([models.baseline] + [p.custom for p in models.pairs], options.clip_skip)
    shard_range(len(prompts), options.batch_size, options.shard)
    for pair in models.pairs:
        with for_model(pair.name, len(models.pairs)):
            if options.alignit is not None:
                validate(pair, concepts, options.alignit)  # (checks the concepts against the added tokens too)
            else:  # strict where the added tokens are all the model learned
                strict = pair.method == "textual_inversion"
                check_concepts_use_added(pair.custom, models.baseline.tokenizer, concepts, strict=strict)


@contextlib.contextmanager
def for_model(name: str, n_models: int) -> Iterator[None]:
    """With several customized models, what a check says names the model it is about (they share the concepts)."""
    if n_models < 2:
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except ProbeError as e:
            fix = f"{e.fix} (every model of one store shares the concepts: record {name} in a store of its own)"
            raise ProbeError(f"model {name}: {e.problem}", fix if e.fix else None) from e
    for w in caught:
        text = f"model {name}: {w.message}" if issubclass(w.category, ProbeWarning) else w.message
        warnings.warn(text, w.category, stacklevel=3)


def unet_only_note(names: list[str], xl: bool = False) -> str:
    one = len(names) == 1
    return (
        f"the text encoder(s) of {', '.join(names)} hold the baseline's weights (UNet-only "
        f"customization{'' if one else 's'}): {'its' if one else 'their'} token_embedding, encoder_layer, "
        f"encoder_output{' and pooled' if xl else ''} differences come from the prompt edit alone (the concept left "
        f"out of the baseline's prompt), not from training; key/value differences also hold "
        f"{'its' if one else 'their'} UNet's changes"
    )


def unet_only_models(models: ModelSet) -> list[str]:
    """The customized models whose text encoders equal the baseline's and that changed something (a model that
    changed nothing is already said to)."""
    return [
        p.name
        for p in models.pairs
        if not any(CHANGED_NOTHING in w for w in p.warnings) and same_text_encoders(p.custom, models.baseline)
    ]


def check_clip_skip(pipes: list[StableDiffusionPipeline], clip_skip: int) -> None:
    """``clip_skip`` counts back from the state the pipeline uses (SD: the last layer's; SDXL: the penultimate one's):
    it must stay within every text encoder's layers."""
    for pipe in pipes:
        for group, _tok, te in text_encoders(pipe):
            n = te.config.num_hidden_layers
            most = n - 1 if is_xl(pipe) else n  # SDXL starts from the penultimate layer; 0 layers back is the input
            if clip_skip > most:
                where = "the second text encoder" if group == TEXT_2 else "the text encoder"
                raise ProbeError(
                    f"--clip-skip {clip_skip} reaches past the first layer of {where} ({n} layers)",
                    f"pass --clip-skip {most} or less",
                )


def record_models(
    writer: StoreWriter,
    models: ModelSet,
    job: tuple[list[Concept], list[str]],
    tables: dict[str, TokenTable],
    span: range,
    options: RecordOptions,
    *,
    n_tokens: int | None,
    attrs: dict,
    progress: tqdm,
) -> None:
    """Record every stage of the baseline and each customized model on ``prompts[span]`` batch by batch, continuing
    after what ``writer`` already holds for each; with ``options.alignit`` each model's AlignIT branch right after
    it, from the same batch's encodings (``job``: the concepts and all prompts), so that AlignIT's context K/V are
    the recorded baseline's values themselves."""
    pipes = {BASELINE: models.baseline, **{p.name: p.custom for p in models.pairs}}
    aligned = {}
    if options.alignit is not None:
        aligned = {p.name: alignit_branch(p.name, len(models.pairs)) for p in models.pairs}
    done = min(writer.written(name) for name in [*pipes, *aligned.values()])
    progress.update(done)
    warned: dict[str, list[str]] = {branch: [] for branch in aligned.values()}
    dummies = {}  # each model's encoding of the dummy prompts: the same for every batch
    for start in range(span.start + done, span.stop, options.batch_size):
        stop = min(start + options.batch_size, span.stop)
        todo = {b for b in [*pipes, *aligned.values()] if span.start + writer.written(b) < stop}
        base = None  # the baseline's encoding, where an AlignIT branch of this batch takes it
        for name, pipe in pipes.items():
            branch = aligned.get(name)
            if not (name in todo or branch in todo or (name == BASELINE and todo & set(aligned.values()))):
                continue
            tokenized = tables[name][start:stop]
            stages = stage_tensors(pipe, tokenized, clip_skip=options.clip_skip)
            if name in todo:
                batch = record_batch(
                    pipe, tokenized, start, store_dtype=options.store_dtype, n_tokens=n_tokens, stages=stages
                )
                writer.append(name, batch, attrs[name])
            if name == BASELINE:
                base = as_encoded(pipe, tokenized, stages)
            elif branch in todo:
                reuse = {"baseline": base, "custom": as_encoded(pipe, tokenized, stages), "dummy": dummies.get(name)}
                del stages
                concepts, prompts = job
                pair, skip = models.pair(name), options.clip_skip
                akv = alignit_kv(
                    pair, concepts, prompts[start:stop], options.alignit, first=start, clip_skip=skip, reuse=reuse
                )
                warned[branch] += akv.warnings
                dummies[name] = akv.dummy
                writer.append(branch, alignit_batch(akv, start, options.store_dtype), attrs[branch])
        progress.update(stop - start)
    for branch, w in warned.items():
        writer.add_warnings(branch, w)


def embedding_groups(writer: StoreWriter, models: ModelSet, concepts: list[Concept]) -> None:
    """Each customized model's learned vectors of the concepts (an unchanged instance word is none)."""
    for pair in models.pairs:
        ids = sorted({i for c in concepts for i in modifier_ids(pair.custom, c)})
        tokens = pair.custom.tokenizer.convert_ids_to_tokens(ids)
        ids = learned_ids(pair.custom, models.baseline, ids)
        writer.put(f"{pair.name}/embedding", embedding_diagnostics(pair.custom, models.baseline, ids))
        if is_xl(pair.custom):  # SDXL: the second encoder's vectors of the same tokens
            ids_2 = pair.custom.tokenizer_2.convert_tokens_to_ids(tokens)
            ids_2 = learned_ids(pair.custom, models.baseline, ids_2, encoder=1)
            diagnostics = embedding_diagnostics(pair.custom, models.baseline, ids_2, encoder=1)
            writer.put(f"{pair.name}/embedding_2", diagnostics)


def record_store(
    models: ModelSet | ModelPair,
    concepts: list[Concept],
    prompts: list[str],
    out: str | os.PathLike,
    options: RecordOptions | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
    nodes: dict[str, xr.Dataset] | None = None,
) -> Path:
    """Record the baseline and every customized model of ``models`` (a ``ModelSet``) on ``prompts`` into the
    store at ``out``; returns its path. ``nodes`` are extra groups written as they are (attention maps).

    Batches stream into ``<out>.partial``; rerunning the same job after a crash resumes it (``jobs`` says what "the
    same job" is). With ``options.summary`` the branches hold per-token distances to the baseline instead of the
    activations (``record.summary``)."""
    options = options or RecordOptions()
    models = as_model_set(models)
    check_job(models, concepts, prompts, options)
    span = shard_range(len(prompts), options.batch_size, options.shard)
    first = models.pairs[0]
    tables = {}
    notes: list[str] = []
    for pair in models.pairs:
        try:
            custom_tp, base_tp, w = tokenize_table(prompts, span, pair.custom, models.baseline.tokenizer, concepts)
        except ProbeError as e:  # with several customized models, say which one
            if len(models.pairs) == 1:
                raise
            raise ProbeError(f"customized model {pair.name}: {e.problem}", e.fix) from None
        tables[pair.name] = custom_tp
        tables[BASELINE] = base_tp
        notes += [x for x in w if x not in notes]
    xl = is_xl(models.baseline)
    unet_only = {name: unet_only_note([name], xl) for name in unet_only_models(models)}
    for note in notes + ([unet_only_note(list(unet_only), xl)] if unet_only else []):  # said once for all models
        warnings.warn(note, ProbeWarning, stacklevel=2)
    n_full = first.custom.tokenizer.model_max_length
    n_tokens = n_full
    if options.drop_padding:
        kept = max(jobs.kept_tokens(prompts, p.custom, models.baseline.tokenizer, concepts) for p in models.pairs)
        if options.alignit is not None:
            kept = max([kept] + [alignit_length(p, concepts, prompts, options.alignit) for p in models.pairs])
        n_tokens = min(n_full, kept)
    device, dtype = placement(first.custom.unet)
    plain = dict(
        batch_size=options.batch_size,
        clip_skip=options.clip_skip,
        seed=options.seed,
        store_dtype=np.dtype(options.store_dtype).name,
        drop_padding=bool(options.drop_padding),
        n_tokens=n_tokens,
        dtype=str(dtype).replace("torch.", ""),
        device_type=device.type,
        alignit=None if options.alignit is None else options_dict(options.alignit, is_xl(models.baseline)),
        **({"summary": True} if options.summary else {}),  # full jobs keep the fingerprints they had
        **options.extra,
    )
    vers = versions()
    attrs = dict(
        concepts=[asdict(c) for c in concepts],
        versions=vers,
        command=command,
        warnings=notes + models.warnings,
        n_prompts=len(prompts),
        options=plain,
        n_tokens=n_tokens,
        n_tokens_full=n_full,
        shard=shard_name(options.shard),
        prompt_range=[span.start, span.stop],
        custom_models=models.names,
        fingerprint=jobs.job_fingerprint(models, concepts, prompts, plain, vers),
        summary=1 if options.summary else None,
    )
    keep = n_tokens if options.drop_padding else None
    # writes overlap the next batch's compute in a thread where a GPU computes; on CPU that thread would only take
    # cores from torch's own threads, so they write in between batches
    try:
        with StoreWriter(
            out,
            overwrite=overwrite,
            attrs=attrs,
            chunk_prompts=min(options.batch_size, len(span)),
            n_prompts=len(span),
            n_tokens=keep,
            first_prompt=span.start,
            background=device.type != "cpu",
        ) as writer:
            branches = [(BASELINE, models.baseline)] + [(p.name, p.custom) for p in models.pairs]
            m_attrs = {}
            for name, pipe in branches:
                m_attrs[name] = model_attrs(models, name, device, dtype, options.seed, options.clip_skip)
                own = [unet_only[name]] if name in unet_only else []
                m_attrs[name]["warnings"] = m_attrs[name]["warnings"] + notes + own
                m_attrs[name]["sites"] = attn2_paths(pipe.unet)
            bar = progress_bar(len(span), "record (summary)" if options.summary else "record", progress)
            if options.summary:
                record_summary(
                    writer, models, concepts, prompts, tables, span, options, n_tokens=keep, attrs=m_attrs, progress=bar
                )
            else:
                if options.alignit is not None:
                    for pair in models.pairs:
                        m_attrs[alignit_branch(pair.name, len(models.pairs))] = alignit_attrs(pair, options.alignit)
                job = (concepts, prompts)
                record_models(writer, models, job, tables, span, options, n_tokens=keep, attrs=m_attrs, progress=bar)
            bar.close()
            embedding_groups(writer, models, concepts)
            for path, ds in (nodes or {}).items():
                writer.put(path, ds)
            return writer.commit()
    finally:  # page-locked memory the host copies left cached is given back (CUDA)
        if device.type == "cuda":
            release_host_copies()
