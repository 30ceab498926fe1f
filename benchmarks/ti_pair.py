"""The Textual Inversion pair the benchmarks time at real shapes (random weights): the customized model shares the
baseline's UNet, VAE and scheduler and carries a token ``<new1>`` in its own copy of every text encoder (SDXL: both,
with a vector per encoder, as textual_inversion_sdxl.py trains it), loaded through diffusers'
``load_textual_inversion`` as the toolkit loads such files.

    pair = ti_pair(build_sdxl_shapes_pipeline(0, "cuda", torch.float16), "sdxl-random")
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

from alignit_probe.models.load import ModelPair
from alignit_probe.models.pipes import is_xl

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

TOKEN = "<new1>"


def ti_pair(base: StableDiffusionPipeline, baseline_id: str, token: str = TOKEN) -> ModelPair:
    """``base`` (on its device and dtype) and a customized copy of its text path with ``token`` added (seeded
    vectors: seed 1 for the first encoder, 2 for SDXL's second)."""
    base.set_progress_bar_config(disable=True)
    names = [("text_encoder", "tokenizer")] + ([("text_encoder_2", "tokenizer_2")] if is_xl(base) else [])
    parts = dict(base.components)
    for te, tok in names:
        parts[te], parts[tok] = copy.deepcopy(parts[te]), copy.deepcopy(parts[tok])
    custom = type(base)(**parts, **({"add_watermarker": False} if is_xl(base) else {}))
    custom.set_progress_bar_config(disable=True)
    for seed, (te, tok) in enumerate(names, 1):
        encoder = getattr(custom, te)
        width = encoder.get_input_embeddings().weight.shape[-1]
        vec = torch.randn(width, generator=torch.Generator().manual_seed(seed))
        custom.load_textual_inversion({token: vec}, token=token, text_encoder=encoder, tokenizer=getattr(custom, tok))
        encoder.to(base.unet.device, base.unet.dtype)
    return ModelPair(
        baseline=base,
        custom=custom,
        baseline_id=baseline_id,
        custom_ids=["ti-random"],
        method="textual_inversion",
        artifacts=[],
        warnings=[],
    )
