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
import re
from dataclasses import asdict, is_dataclass

import torch

from .concepts import baseline_text
from .errors import ProbeError
from .sites import SUFFIX, attn2_paths

SHARD_HINT = "write --shard I/N with 0 <= I < N, e.g. --shard 0/4 (shards are numbered from 0)"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` → (i, N); None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ProbeError(f"bad shard {text!r}", SHARD_HINT)
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise ProbeError(f"bad shard {text!r}: there must be at least one shard", SHARD_HINT)
    if i >= n:
        raise ProbeError(f"bad shard {text!r}: shard index {i} is not in 0..{n - 1}", SHARD_HINT)
    return i, n


def shard_name(shard: tuple[int, int] | None) -> str | None:
    return None if shard is None else f"{shard[0]}/{shard[1]}"


def shard_range(n_prompts: int, batch_size: int, shard: tuple[int, int] | None) -> range:
    """Global indices of the prompts that ``shard`` records (all of them without a shard)."""
    if batch_size < 1:
        raise ProbeError(f"batch size {batch_size} is not positive", "pass --batch-size 1 or more")
    if shard is None:
        return range(n_prompts)
    i, n = shard
    batches = -(-n_prompts // batch_size)
    lo, hi = (i * batches // n) * batch_size, ((i + 1) * batches // n) * batch_size
    span = range(min(lo, n_prompts), min(hi, n_prompts))
    if not span:
        raise ProbeError(f"shard {i}/{n} has no prompts: {n_prompts} prompts make only {batches} batch(es) of "
                         f"{batch_size}", f"use at most {batches} shards, or a smaller --batch-size")
    return span


def kept_tokens(prompts: list[str], custom_pipe, baseline_tokenizer, concepts) -> int:
    """T for ``--drop-padding``: the most positions any prompt fills (start and end token included), over the
    customized and the baseline tokenization of every prompt (all shards), so all stores share one token axis."""
    ctok = custom_pipe.tokenizer
    convert = getattr(custom_pipe, "maybe_convert_prompt", None)
    texts = ((ctok, [convert(p, ctok) if convert else p for p in prompts]),
             (baseline_tokenizer, [baseline_text(p, concepts) for p in prompts]))
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
                    parts += [flat[:: max(1, flat.numel() // samples)].float(), last.float()]
    if parts:
        h.update(torch.cat(parts).cpu().numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(pipe) -> str:
    """What a model contributes to the recorded stages: tokenizer vocabulary size and added tokens, the text
    encoder's weights, and every attn2 site's K/V projections and processor."""
    unet, tok = pipe.unet, pipe.tokenizer
    processors = unet.attn_processors
    modules = [("text_encoder", pipe.text_encoder)]
    names = [f"tokenizer:{len(tok)}:{sorted(tok.get_added_vocab().items())}"]
    for path in attn2_paths(unet):
        attn, proc = unet.get_submodule(path), processors[path + SUFFIX]
        modules.append((path, attn))
        names.append(f"{path}:{type(proc).__name__}")
        if isinstance(proc, torch.nn.Module):
            modules.append((path + SUFFIX, proc))
    return hashlib.sha256(("|".join(names) + _weights_digest(modules)).encode()).hexdigest()


def _plain(x):
    return asdict(x) if is_dataclass(x) else x


def job_fingerprint(pair, concepts, prompts: list[str], options: dict, versions: dict) -> str:
    """sha256 of the job's definition (see the module docstring)."""
    prompt_hash = hashlib.sha256("\x1e".join(prompts).encode()).hexdigest()
    artifacts = [{k: v for k, v in _plain(a).items() if k != "path"} for a in pair.artifacts]
    job = dict(prompts=prompt_hash, n_prompts=len(prompts), concepts=[_plain(c) for c in concepts],
               method=pair.method, artifacts=artifacts, models={"baseline": model_fingerprint(pair.baseline),
                                            "custom": model_fingerprint(pair.custom)},
               options=options, versions=versions)
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()
