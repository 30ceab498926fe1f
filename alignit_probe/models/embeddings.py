"""Diagnostics of learned token embeddings: their norm against the vocabulary's norm distribution, and the
vocabulary tokens nearest to them (cosine). A learned vector far outside the vocabulary's norms is a common reason
for a concept to dominate the prompt."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr

from .pipes import text_encoders

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline


def embedding_diagnostics(
    custom_pipe: StableDiffusionPipeline,
    baseline_pipe: StableDiffusionPipeline,
    token_ids: list[int],
    k: int = 5,
    encoder: int = 0,
) -> xr.Dataset:
    """Per learned vector (dim ``vector``): norm, its percentile and z-score among the baseline vocabulary's norms,
    and the ``k`` nearest baseline vocabulary tokens (dim ``neighbor``). ``encoder``: which text encoder (1: SDXL's
    second; ``token_ids`` as its tokenizer numbers them)."""
    _, base_tok, base_te = text_encoders(baseline_pipe)[encoder]
    _, custom_tok, custom_te = text_encoders(custom_pipe)[encoder]
    with torch.no_grad():  # on the model's device, in float32 (half-precision weights upcast; no float64 copy)
        vocab = base_te.get_input_embeddings().weight.detach()
        learned = custom_te.get_input_embeddings().weight.detach()[token_ids].to(vocab.device)
        if vocab.dtype != torch.float64:
            vocab, learned = vocab.float(), learned.float()
        vnorm = torch.linalg.vector_norm(vocab, dim=-1)
        norm = torch.linalg.vector_norm(learned, dim=-1)
        cos = (learned / norm[:, None]) @ vocab.T / vnorm  # cosine to every vocabulary row
        for row, tid in enumerate(token_ids):
            if tid < vocab.shape[0]:
                cos[row, tid] = -2.0  # a token is not its own neighbour
        top = cos.topk(k, dim=-1)
        near_cos, near_ids = top.values.double().cpu().numpy(), top.indices.cpu()
        vn, norm = vnorm.double().cpu().numpy(), norm.double().cpu()
    names = base_tok.convert_ids_to_tokens(near_ids.flatten().tolist())
    return xr.Dataset(
        {
            "norm": ("vector", norm.numpy()),
            "norm_percentile": ("vector", np.array([(vn < n).mean() * 100 for n in norm.numpy()])),
            "norm_z": ("vector", (norm.numpy() - vn.mean()) / vn.std()),
            "neighbor_token": (("vector", "neighbor"), np.array(names, dtype=object).reshape(len(token_ids), k)),
            "neighbor_cosine": (("vector", "neighbor"), near_cos),
        },
        coords={
            "vector": np.arange(len(token_ids)),
            "vector_token": ("vector", np.array(custom_tok.convert_ids_to_tokens(token_ids), dtype=object)),
            "vector_id": ("vector", np.array(token_ids, dtype=np.int64)),
        },
        attrs={"vocab_norm_mean": float(vn.mean()), "vocab_norm_std": float(vn.std())},
    )


def learned_ids(
    custom_pipe: StableDiffusionPipeline, baseline_pipe: StableDiffusionPipeline, token_ids: list[int], encoder: int = 0
) -> list[int]:
    """The ids among ``token_ids`` whose embedding the customization learned: tokens the baseline lacks, and rows
    that differ from the baseline's (an instance word such as ``sks`` is learned only where the text encoder was
    trained)."""
    base = text_encoders(baseline_pipe)[encoder][2].get_input_embeddings().weight.detach()
    custom = text_encoders(custom_pipe)[encoder][2].get_input_embeddings().weight.detach()
    return [i for i in token_ids if i >= base.shape[0] or not torch.equal(custom[i].to(base.device), base[i])]


def same_text_encoders(custom_pipe: StableDiffusionPipeline, baseline_pipe: StableDiffusionPipeline) -> bool:
    """Whether every text encoder of ``custom_pipe`` holds exactly the baseline's weights (a UNet-only
    customization: DreamBooth without ``--train_text_encoder``, a UNet LoRA)."""
    for (_, _, custom), (_, _, base) in zip(text_encoders(custom_pipe), text_encoders(baseline_pipe)):
        if custom is base:
            continue
        mine, theirs = custom.state_dict(), base.state_dict()
        if mine.keys() != theirs.keys():
            return False
        if any(a.shape != b.shape or not torch.equal(a, b.to(a.device)) for k, a in mine.items() for b in [theirs[k]]):
            return False
    return True
