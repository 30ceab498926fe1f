"""Denoising with a diffusers pipeline from given conditioning, reproducibly across devices: the one generation
call that AlignIT, K/V swaps and attention maps share. SDXL pipelines also take the pooled text embedding (and
compute the negative conditioning themselves unless it is given: zeros where ``force_zeros_for_empty_prompt``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import ProbeError
from ..models.pipes import is_xl, placement

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline


def generate_images(
    pipe: StableDiffusionPipeline,
    prompt_embeds: torch.Tensor,
    *,
    pooled_prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    negative_pooled_prompt_embeds: torch.Tensor | None = None,
    seed: int = 0,
    steps: int = 30,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    output_type: str = "pil",
    progress: bool = True,
) -> list:
    """One image per prompt; the initial noise comes from a CPU generator so every device draws the same. SDXL
    needs ``pooled_prompt_embeds`` (``models.encoder.conditioning`` returns it with ``prompt_embeds``)."""
    extra, (device, dtype) = {}, placement(pipe.unet)
    if is_xl(pipe):
        if pooled_prompt_embeds is None:
            raise ProbeError(
                "an SDXL pipeline needs the pooled text embedding to generate",
                "pass pooled_prompt_embeds= (models.encoder.conditioning returns it)",
            )
        extra["pooled_prompt_embeds"] = pooled_prompt_embeds.to(device)
        if negative_pooled_prompt_embeds is not None:
            extra["negative_pooled_prompt_embeds"] = negative_pooled_prompt_embeds.to(device)
    if negative_prompt_embeds is not None:
        extra["negative_prompt_embeds"] = negative_prompt_embeds.to(device)
    gen = torch.Generator("cpu").manual_seed(seed)
    shape = (
        prompt_embeds.shape[0],
        pipe.unet.config.in_channels,
        (height or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor,
        (width or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor,
    )
    latents = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=not progress)
    out = pipe(
        prompt_embeds=prompt_embeds.to(device),
        latents=latents,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        output_type=output_type,
        **extra,
    )
    return out.images
