"""What one recording job is: which prompts it records (``--shard i/N``), which token positions it keeps
(``--drop-padding``), and its fingerprint, which tells a resumable partial store, or a sibling shard, from the store
of a different job.

Shards are contiguous runs of whole batches: of the B = ⌈prompts / batch_size⌉ batches, shard i of N records
batches ⌊iB/N⌋ … ⌊(i+1)B/N⌋ − 1. Every batch therefore holds the same prompts as in an unsharded run, so the shards
together hold exactly the unsharded store's data; prompt indices stay global (the ``prompt`` coordinate).

The fingerprint hashes everything that decides what is recorded: the prompts, concepts, customization method,
artifact hashes, a digest of the weights that produce the recorded stages (text encoder, attn2 K/V projections and
processors), options (batch size, clip skip, dtypes, dropped padding, …) and library versions. It leaves out paths
(model and artifact paths, the output path: shards may run on machines with different folders), ``--overwrite``,
and the shard, which is kept beside it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from typing import TYPE_CHECKING

import torch

from ..capture.sites import SUFFIX, attn2_paths
from ..models.pipes import is_xl
from ..text.concepts import Concept
from ..text.prompt_text import baseline_text

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from transformers import PreTrainedTokenizerBase

    from ..models.load import ModelSet


def kept_tokens(
    prompts: list[str],
    custom_pipe: StableDiffusionPipeline,
    baseline_tokenizer: PreTrainedTokenizerBase,
    concepts: list[Concept],
) -> int:
    """T for ``--drop-padding``: the most positions any prompt fills (start and end token included), over the
    customized and the baseline tokenization of every prompt (all shards), so all stores share one token axis."""
    ctok = custom_pipe.tokenizer
    convert = getattr(custom_pipe, "maybe_convert_prompt", None)
    texts = (
        (ctok, [convert(p, ctok) if convert else p for p in prompts]),
        (baseline_tokenizer, [baseline_text(p, concepts) for p in prompts]),
    )
    n = 1
    for tok, tx in texts:
        for i in range(0, len(tx), 1024):
            ids = tok(tx[i : i + 1024], truncation=True, max_length=tok.model_max_length).input_ids
            n = max(n, *map(len, ids))
    return n


def _weights_digest(modules, samples: int = 4096) -> str:
    """Digest of tensors (name, shape, dtype, ~4k evenly strided elements and the last row of each): catches a
    retrained or swapped weight and added embedding rows in milliseconds, without hashing gigabytes."""
    h, parts = hashlib.sha256(), []
    with torch.no_grad():
        for prefix, module in modules:
            for name, t in module.state_dict().items():
                h.update(f"{prefix}.{name}:{tuple(t.shape)}:{t.dtype};".encode())
                if t.numel():
                    flat = t.reshape(-1)
                    last = flat[-(t.shape[-1] if t.ndim else 1) :]
                    parts += [flat[:: max(1, flat.numel() // samples)], last]
    if parts:
        h.update(float_cat(parts).numpy().tobytes())
    return h.hexdigest()


def float_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat([p.float() for p in parts]).cpu()``, with one concatenation and one conversion per run of parts
    of one dtype and device instead of one conversion per part (a model has ~1,000 weights: on a GPU each operation
    costs its launch)."""
    runs: list[list[torch.Tensor]] = []
    for p in parts:
        if runs and (runs[-1][0].dtype, runs[-1][0].device) == (p.dtype, p.device):
            runs[-1].append(p)
        else:
            runs.append([p])
    return torch.cat([torch.cat(run).float().cpu() for run in runs])


def model_fingerprint(pipe: StableDiffusionPipeline) -> str:
    """What a model contributes to the recorded stages: tokenizer vocabulary size and added tokens, the text
    encoder's weights (SDXL: both encoders and tokenizers), and every attn2 site's K/V projections and processor."""
    unet, tok = pipe.unet, pipe.tokenizer
    processors = unet.attn_processors
    modules = [("text_encoder", pipe.text_encoder)]
    names = [f"tokenizer:{len(tok)}:{sorted(tok.get_added_vocab().items())}"]
    if is_xl(pipe):  # SDXL's second encoder (one-encoder pipelines keep the fingerprints they had)
        tok2 = pipe.tokenizer_2
        modules.append(("text_encoder_2", pipe.text_encoder_2))
        names.append(f"tokenizer_2:{len(tok2)}:{tok2.pad_token}:{sorted(tok2.get_added_vocab().items())}")
    for path in attn2_paths(unet):
        attn, proc = unet.get_submodule(path), processors[path + SUFFIX]
        modules.append((path, attn))
        names.append(f"{path}:{type(proc).__name__}")
        if isinstance(proc, torch.nn.Module):
            modules.append((path + SUFFIX, proc))
    return hashlib.sha256(("|".join(names) + _weights_digest(modules)).encode()).hexdigest()


def _plain(x):
    return asdict(x) if is_dataclass(x) else x


def job_fingerprint(
    models: ModelSet, concepts: list[Concept], prompts: list[str], options: dict, versions: dict
) -> str:
    """sha256 of the job's definition (see the module docstring); ``models``: a ``ModelSet``."""
    prompt_hash = hashlib.sha256("\x1e".join(prompts).encode()).hexdigest()
    customs = {
        p.name: dict(
            method=p.method,
            model=model_fingerprint(p.custom),
            artifacts=[{k: v for k, v in _plain(a).items() if k != "path"} for a in p.artifacts],
        )
        for p in models.pairs
    }
    job = dict(
        prompts=prompt_hash,
        n_prompts=len(prompts),
        concepts=[_plain(c) for c in concepts],
        baseline=model_fingerprint(models.baseline),
        customs=customs,
        options=options,
        versions=versions,
    )
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()
