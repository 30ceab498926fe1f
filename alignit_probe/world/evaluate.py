"""Sampling the world model and scoring what it draws: per-sample correctness of every attribute a caption names."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .model import GUIDANCE, HEIGHT, STEPS, WIDTH
from .scenes import NAMES, Scenes, sample_scenes
from .scorer import correct, score_images

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline


def world_images(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    seeds: list[int],
    batch: int = 64,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    progress: bool = False,
) -> np.ndarray:
    """Images (sample, 32, 32, 3) in [0, 1] for ``prompts``, each from its own seed (so a sample does not depend on
    the batch it falls in)."""
    device = pipe.unet.device
    pipe.set_progress_bar_config(disable=True)
    out = []
    chunks = range(0, len(prompts), batch)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="sampling", unit="batch", leave=False)
    for start in chunks:
        ps = prompts[start : start + batch]
        gens = [torch.Generator(device).manual_seed(s) for s in seeds[start : start + batch]]
        with torch.no_grad():
            images = pipe(
                ps,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=HEIGHT,
                width=WIDTH,
                generator=gens,
                output_type="np",
            ).images
        out.append(np.asarray(images, dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, HEIGHT, WIDTH, 3), np.float32)


def correctness(images: np.ndarray, scenes: Scenes) -> dict[str, np.ndarray]:
    """For each attribute, a (sample,) float array: 1 where the caption names it and the image shows it, 0 where it
    is named and wrong, NaN where the caption does not name it."""
    scored = score_images(images)
    table = {a: np.full(len(scored), np.nan) for a in NAMES}
    for i, (s, v, n) in enumerate(zip(scored, scenes.values.tolist(), scenes.named.tolist())):
        for a, ok in correct(s, v, n).items():
            table[a][i] = float(ok)
    return table


def sample_accuracy(
    pipe: StableDiffusionPipeline,
    n: int,
    seed: int = 0,
    split: str = "held_out",
    batch: int = 64,
) -> dict:
    """Mean accuracy per attribute of ``n`` sampled captions of ``split`` (rounded to 4 digits)."""
    scenes = sample_scenes(n, torch.Generator().manual_seed(seed), split)
    images = world_images(pipe, scenes.captions(), [seed * 100_003 + i for i in range(n)], batch=batch)
    table = correctness(images, scenes)
    return {a: round(float(np.nanmean(v)), 4) for a, v in table.items() if not np.isnan(v).all()}
