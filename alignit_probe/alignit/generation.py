"""Denoising with a diffusers pipeline from given conditioning, reproducibly across devices: the one generation
call that AlignIT, K/V swaps and attention maps share."""

from __future__ import annotations

import torch


def generate_images(
    pipe,
    prompt_embeds: torch.Tensor,
    *,
    seed: int = 0,
    steps: int = 30,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    output_type: str = "pil",
    progress: bool = True,
) -> list:
    """One image per prompt; the initial noise comes from a CPU generator so every device draws the same."""
    gen = torch.Generator("cpu").manual_seed(seed)
    shape = (
        prompt_embeds.shape[0],
        pipe.unet.config.in_channels,
        (height or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor,
        (width or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor,
    )
    latents = torch.randn(shape, generator=gen).to(device=pipe.unet.device, dtype=pipe.unet.dtype)
    pipe.set_progress_bar_config(disable=not progress)
    out = pipe(
        prompt_embeds=prompt_embeds.to(pipe.unet.device),
        latents=latents,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        output_type=output_type,
    )
    return out.images
