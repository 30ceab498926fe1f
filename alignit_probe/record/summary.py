"""Summary recording (``record --summary``): per-token distances to the baseline, computed on the model's device,
stored instead of the activations (kilobytes per prompt instead of megabytes).

For each batch the baseline's stages are computed once; every customized model's stages (and every AlignIT branch's
K/V) are compared with the baseline's partner tokens (``ref_index``) on the device, with the formulas of
``analysis.metrics`` (cosine distance as ‖â − b̂‖² / 2, relative L2 ‖a − b‖ / ‖b‖, NaN without a partner), in
float64 (float32 on MPS, which has no float64). Both sides are first rounded to the store dtype, as a full store
would hold them, so ``compare`` gives the same rows on a summary store as on the full store of the same job.

Each branch but the baseline gets a group ``distance``: ``token_embedding`` / ``encoder_output`` (prompt, token,
metric), ``encoder_layer`` (prompt, layer, token, metric), ``key`` / ``value`` (prompt, site, token, metric), with
``metric`` = ``schema.METRICS`` and ``site`` = the attn2 paths; SDXL adds ``token_embedding_2``, ``encoder_layer_2``
(prompt, layer_2, token, metric) of its second text encoder and ``pooled`` (prompt, metric). AlignIT branches have
``key`` / ``value`` only. The baseline keeps its token labels (coordinates) only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr
from numpy.typing import DTypeLike

from ..alignit.engine import AlignITKV, alignit_kv
from ..schema import BASELINE, METRICS, alignit_branch
from ..store.batch import Batch, token_coords
from ..text.concepts import TokenizedPrompt
from .batch import TORCH_DTYPES, as_encoded, stage_tensors
from .branches import alignit_attrs

if TYPE_CHECKING:
    from tqdm import tqdm

    from ..models.load import ModelSet
    from ..store.writer import StoreWriter
    from ..text.concepts import Concept
    from ..text.tables import TokenTable

GROUP = "distance"


def compute_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (CPU, CUDA), float32 on MPS."""
    return torch.float32 if device.type == "mps" else torch.float64


def partner_distances(a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor, store_dtype: torch.dtype) -> torch.Tensor:
    """(cosine distance, relative L2) of every token of ``a`` (prompt, …, token, channel) to its partner
    ``b[…, ref[prompt, token], :]`` (``b``: same leading axes, its own token axis), NaN where ``ref < 0``; both
    rounded to ``store_dtype`` first. Returns (prompt, …, token, metric), as ``analysis.metrics`` computes it."""
    ref = ref.to(a.device)
    n_prompts, n_tok = ref.shape
    shape = (n_prompts,) + (1,) * (a.ndim - 3) + (n_tok,)
    idx = ref.clamp(min=0).view(shape + (1,)).expand(*b.shape[:-2], n_tok, b.shape[-1])
    dtype = compute_dtype(a.device)
    bb = torch.gather(b.to(a.device), -2, idx).to(store_dtype).to(dtype)
    a = a.to(store_dtype).to(dtype)
    na = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    nb = torch.linalg.vector_norm(bb, dim=-1, keepdim=True)
    # 1 − cos(a, b) = ‖â − b̂‖² / 2: exactly 0 for identical tokens, accurate for small angles
    cos = 0.5 * (a / na - bb / nb).square().sum(-1)
    rel = torch.linalg.vector_norm(a - bb, dim=-1) / nb.squeeze(-1)
    out = torch.stack([cos, rel], dim=-1)
    return out.masked_fill((ref < 0).view(shape + (1,)), float("nan"))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float64).cpu().numpy()


def kv_distances(
    kv: dict, base_kv: dict, ref: torch.Tensor, store_dtype: torch.dtype, n_tok: int, together: bool | None = None
) -> tuple[dict, list[str]]:
    """``key`` / ``value`` distances (prompt, site, token, metric) of the sites both have, and those sites.

    ``together``: the sites of one width stacked, one distance computation each (SDXL: 2 instead of 70) — on a GPU,
    where each operation costs its launch; site by site on a CPU, where one site's temporaries stay in cache
    (None: by the tensors' device). Both give the same values."""
    sites = [p for p in kv if p in base_kv]
    if together is None:
        together = bool(sites) and kv[sites[0]][0].device.type != "cpu"
    out = {}
    for which, name in enumerate(("key", "value")):
        groups: dict = {}
        for i, p in enumerate(sites):
            groups.setdefault(kv[p][which].shape[-1] if together else i, []).append(i)
        d: list = [None] * len(sites)
        for group in groups.values():
            a = torch.stack([kv[sites[i]][which][:, :n_tok] for i in group], dim=1)
            b = torch.stack([base_kv[sites[i]][which] for i in group], dim=1)
            for j, x in zip(group, partner_distances(a, b, ref, store_dtype).unbind(1)):
                d[j] = x
        values = to_numpy(torch.stack(d, dim=1)) if d else np.empty((ref.shape[0], 0, n_tok, len(METRICS)))
        out[name] = (("prompt", "site", "token", "metric"), values)
    return out, sites


def distance_group(variables: dict, coords: xr.Dataset, sites: list[str], layers: dict | None = None) -> xr.Dataset:
    """The ``distance`` group; ``layers``: {layer dim: its length} (``layer``; SDXL also ``layer_2``)."""
    index = {"prompt": coords.prompt.values, "token": coords.token.values, "metric": np.array(METRICS, dtype=object)}
    index["site"] = np.array(sites, dtype=object)
    index.update({dim: np.arange(n) for dim, n in (layers or {}).items()})
    return xr.Dataset(variables, coords=index)


SUFFIX = {"text": "", "text_2": "_2", "text_out": ""}  # SDXL's second encoder: token_embedding_2, encoder_layer_2


def summary_batch(
    stages: dict,
    base: dict,
    tokenized: list[TokenizedPrompt],
    start: int,
    store_dtype: DTypeLike,
    n_tokens: int | None = None,
) -> Batch:
    """One customized model's batch as distances to the baseline's (``stages`` / ``base``: ``stage_tensors``).
    SDXL's second encoder's stages get the suffix ``_2`` (``encoder_layer_2`` along ``layer_2``); its ``pooled``
    embedding is compared prompt to prompt: (prompt, metric)."""
    coords = token_coords(tokenized, start, n_tokens)
    n_tok = coords.sizes["token"]
    ref = torch.as_tensor(coords.ref_index.values.astype(np.int64))
    store = TORCH_DTYPES[np.dtype(store_dtype).name]
    variables, layers = {}, {}
    for group, suffix in SUFFIX.items():
        for name, t in stages.get(group, {}).items():
            if name == "pooled":
                own = torch.zeros(t.shape[0], 1, dtype=torch.int64)
                d = partner_distances(t[:, None], base[group][name][:, None], own, store)[:, 0]
                variables[name] = (("prompt", "metric"), to_numpy(d))
                continue
            d = partner_distances(t[..., :n_tok, :], base[group][name], ref, store)
            if name == "encoder_layer":
                layers["layer" + suffix] = t.shape[1]
                variables[name + suffix] = (("prompt", "layer" + suffix, "token", "metric"), to_numpy(d))
            else:
                variables[name + suffix] = (("prompt", "token", "metric"), to_numpy(d))
    kv, sites = kv_distances(stages["kv"], base["kv"], ref, store, n_tok)
    return Batch(coords, {GROUP: distance_group({**variables, **kv}, coords, sites, layers)})


def alignit_summary_batch(
    akv: AlignITKV, start: int, base_kv: dict, store_dtype: DTypeLike, n_tokens: int | None = None
) -> Batch:
    """One AlignIT batch as K/V distances to the baseline's (``base_kv``: the baseline's ``stage_tensors`` K/V of
    the same prompts). All positions are kept (the writer cuts them to ``n_tokens``); partners beyond ``n_tokens``
    count as none, as in a full store with ``--drop-padding``."""
    coords = token_coords([p.tokens for p in akv.plans], start)
    ref = coords.ref_index.values.astype(np.int64)
    if n_tokens is not None:
        ref = np.where(ref >= n_tokens, -1, ref)
    store = TORCH_DTYPES[np.dtype(store_dtype).name]
    kv, sites = kv_distances(akv.kv, base_kv, torch.as_tensor(ref), store, coords.sizes["token"])
    return Batch(coords, {GROUP: distance_group(kv, coords, sites)})


def record_summary(
    writer: StoreWriter,
    models: ModelSet,
    concepts: list[Concept],
    prompts: list[str],
    tables: dict[str, TokenTable],
    span: range,
    options: Any,  # a record.run.RecordOptions (that module imports this one)
    *,
    n_tokens: int | None,
    attrs: dict,
    progress: tqdm | None = None,
) -> None:
    """Record ``prompts[span]`` batch by batch as distances (the baseline, every customized model and, with
    ``options.alignit``, every AlignIT branch), continuing after what ``writer`` already holds for each branch.
    ``tables``: the tokenized prompts per branch (``text.tables``); ``attrs``: each model branch's attributes."""
    pairs = {p.name: p for p in models.pairs}
    branch_attrs = dict(attrs)
    aligned = {}
    if options.alignit is not None:
        for p in models.pairs:
            branch = alignit_branch(p.name, len(models.pairs))
            aligned[branch] = p
            branch_attrs[branch] = alignit_attrs(p, options.alignit)
    branches = [BASELINE, *pairs, *aligned]
    warned = {b: [] for b in aligned}
    dummies = {}  # each AlignIT branch's encoding of the dummy prompts: the same for every batch
    done = min(writer.written(b) for b in branches)
    if progress is not None:
        progress.update(done)
    kw = dict(clip_skip=options.clip_skip)
    for start in range(span.start + done, span.stop, options.batch_size):
        stop = min(start + options.batch_size, span.stop)
        todo = [b for b in branches if span.start + writer.written(b) < stop]
        base = None  # the baseline's stages, computed once per batch where another branch needs them
        if todo != [BASELINE]:
            base = stage_tensors(models.baseline, tables[BASELINE][start:stop], **kw)
        for name in todo:
            if name == BASELINE:
                batch = Batch(token_coords(tables[BASELINE][start:stop], start, n_tokens), {})
            elif name in pairs:
                tok = tables[name][start:stop]
                stages = stage_tensors(pairs[name].custom, tok, **kw)
                batch = summary_batch(stages, base, tok, start, options.store_dtype, n_tokens)
            else:
                base_enc = as_encoded(models.baseline, tables[BASELINE][start:stop], base)
                pair, reuse = aligned[name], {"baseline": base_enc, "dummy": dummies.get(name)}
                akv = alignit_kv(pair, concepts, prompts[start:stop], options.alignit, first=start, reuse=reuse, **kw)
                warned[name] += akv.warnings
                dummies[name] = akv.dummy
                batch = alignit_summary_batch(akv, start, base["kv"], options.store_dtype, n_tokens)
            writer.append(name, batch, branch_attrs[name])
        if progress is not None:
            progress.update(stop - start)
    for branch, w in warned.items():
        writer.add_warnings(branch, w)
