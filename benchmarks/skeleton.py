"""SDXL-base-1.0's topology at tiny widths, for timing the toolkit's own overhead on a CPU.

Everything the toolkit does per text-encoder layer, per attn2 site and per denoising step happens as often as on
SDXL (two text encoders of 12 and 32 layers, a UNet with 70 attn2 sites in transformer blocks of depth 1/2/10), but
the arithmetic is tiny (widths 32–128). On a GPU SDXL's arithmetic is fast and such per-call costs (Python, kernel
launches, host↔device copies) decide overhead ratios; this pipeline shows them on any machine, in seconds.

    pipe = build_sdxl_skeleton_pipeline(0)        # then ti_pair(pipe, "sdxl-skeleton")
"""

from __future__ import annotations

import torch

from alignit_probe.models.toy import SD15_VAE_CONFIG, SDXL_BASE_UNET_CONFIG, SDXL_TEXT_CONFIGS, sdxl_pipeline

SKELETON_TEXT_CONFIGS = (
    dict(SDXL_TEXT_CONFIGS[0], num_hidden_layers=12),
    dict(SDXL_TEXT_CONFIGS[1], num_hidden_layers=32, projection_dim=48),
)
SKELETON_UNET_CONFIG = dict(
    SDXL_BASE_UNET_CONFIG,
    sample_size=32,
    block_out_channels=(32, 64, 128),
    attention_head_dim=(2, 4, 8),  # heads per block (diffusers' legacy name), as SDXL's (5, 10, 20) are
    cross_attention_dim=32 + 48,
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 48,
)


def build_sdxl_skeleton_pipeline(seed: int = 0, device: str | torch.device | None = None, dtype=None):
    """A ``StableDiffusionXLPipeline`` of SDXL-base's topology at tiny widths (seeded random weights)."""
    return sdxl_pipeline(SKELETON_TEXT_CONFIGS, SKELETON_UNET_CONFIG, SD15_VAE_CONFIG, seed, device, dtype)
