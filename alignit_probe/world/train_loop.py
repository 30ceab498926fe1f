"""The loop every world trainer shares: the concept's references, noised at random timesteps, denoised by the UNet
conditioned on the training prompt; AdamW on whatever the method trains (a ``TrainingPlan``).

The loss is pretraining's (``world.pretrain``): latents ``z`` drawn from the frozen VAE's posterior of each
reference (times its scaling factor), ``t`` uniform, ``x_t = a·z + s·noise`` with ``a = sqrt(ᾱ_t)`` and
``s = sqrt(1 − ᾱ_t)``; the target is ``v = a·noise − s·z`` for a v-prediction scheduler (the world's) or ``noise``
for an epsilon one. Each step sees all K references (one batch), each with its own timestep and noise, drawn from one
seeded ``torch.Generator``. No flips: position is one of the world's attributes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..errors import ProbeError

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

CLIP_GRAD_NORM = 1.0  # as diffusers' training scripts (max_grad_norm)


def _nothing() -> None:
    return None


@dataclass
class TrainingPlan:
    """What one method trains and how it writes its output.

    ``groups``: AdamW parameter groups; ``prompt``: the training prompt as the tokenizer sees it (multi-vector
    placeholders spelt out); ``text_trainable``: the prompt is encoded again every step (else once, without
    gradients); ``after_backward`` / ``after_step``: run after ``backward()`` and after ``optimizer.step()`` (e.g.
    zero and restore the embedding rows a method must not change); ``save(folder)`` writes the method's files."""

    groups: list[dict]
    prompt: str
    text_trainable: bool
    save: Callable[[Path], None]
    after_backward: Callable[[], None] = _nothing
    after_step: Callable[[], None] = _nothing
    trained: list[torch.nn.Module] = field(default_factory=list)  # modules put in train mode


def load_baseline(baseline: str | Path | None, device: torch.device) -> StableDiffusionPipeline:
    """The pipeline to customize: a world weights file (``world pretrain``), a diffusers pipeline folder, or None
    for the shipped world model. Every module frozen, on ``device``; the methods unfreeze what they train."""
    from diffusers import StableDiffusionPipeline

    from ..models.artifacts import is_pipeline_dir
    from ..models.load import load_pipeline
    from .model import world_pipeline

    if baseline is not None and not Path(baseline).exists():
        raise ProbeError(f"baseline {baseline} does not exist", "check the path, or leave --baseline out")
    if baseline is None or Path(baseline).is_file():
        pipe = world_pipeline(baseline)
    elif is_pipeline_dir(baseline):
        pipe = load_pipeline(str(baseline))
    else:
        raise ProbeError(
            f"baseline {baseline} is neither a world weights file nor a diffusers pipeline folder",
            "pass a file from `alignit-probe world pretrain`, a folder from `world pipeline`, or no --baseline",
        )
    if type(pipe) is not StableDiffusionPipeline:
        raise ProbeError(
            f"baseline {baseline} is a {type(pipe).__name__}; the world trainers train Stable Diffusion 1.x/2.x",
            "pass the world model or another StableDiffusionPipeline folder",
        )
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise ProbeError(f"baseline {baseline} predicts {prediction!r}", "use a v- or epsilon-prediction model")
    for module in (pipe.text_encoder, pipe.unet, pipe.vae):
        module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def prompt_ids(pipe: StableDiffusionPipeline, prompt: str) -> torch.Tensor:
    """(1, 77) token ids of ``prompt``, padded as the pipeline pads."""
    tok = pipe.tokenizer
    enc = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    return enc.input_ids.to(pipe.text_encoder.device)


def noised(
    z: torch.Tensor, alphas: torch.Tensor, gen: torch.Generator, v_prediction: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training example of latents ``z``: (noisy latents, timesteps, target) — uniform timesteps, the target v
    (``a·noise − s·z``) or the noise."""
    noise = torch.randn(z.shape, generator=gen, device=z.device)
    t = torch.randint(0, len(alphas), (z.shape[0],), generator=gen, device=z.device)
    a = alphas[t].sqrt()[:, None, None, None]
    s = (1 - alphas[t]).sqrt()[:, None, None, None]
    return a * z + s * noise, t, (a * noise - s * z) if v_prediction else noise


def fit(
    pipe: StableDiffusionPipeline,
    plan: TrainingPlan,
    images: torch.Tensor,
    steps: int,
    seed: int,
    progress: bool = True,
    desc: str = "training",
) -> dict:
    """Train ``plan`` for ``steps`` on ``images`` (K, 3, H, W) in [0, 1]; returns the first and last losses and the
    mean loss of the last tenth of the steps, and the seconds spent."""
    from tqdm.auto import tqdm

    unet, te, vae = pipe.unet, pipe.text_encoder, pipe.vae
    device = unet.device
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        posterior = vae.encode(images.to(device, vae.dtype) * 2 - 1).latent_dist
    mean, std, scale = posterior.mean, posterior.std, vae.config.scaling_factor
    ids = prompt_ids(pipe, plan.prompt)
    fixed = None
    if not plan.text_trainable:
        with torch.no_grad():
            fixed = te(ids)[0]
    alphas = pipe.scheduler.alphas_cumprod.to(device)
    v_prediction = pipe.scheduler.config.get("prediction_type") == "v_prediction"
    params = [p for g in plan.groups for p in g["params"]]
    opt = torch.optim.AdamW(plan.groups)
    for module in plan.trained:
        module.train()
    k, losses, t0 = images.shape[0], [], time.time()
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, leave=False)
    for _ in bar:
        z = (mean + std * torch.randn(mean.shape, generator=gen, device=device)) * scale
        noisy, t, target = noised(z, alphas, gen, v_prediction)
        cond = (te(ids)[0] if fixed is None else fixed).expand(k, -1, -1)
        pred = unet(noisy, t, cond).sample
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        plan.after_backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_GRAD_NORM)
        opt.step()
        plan.after_step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    for module in plan.trained:
        module.eval()
    tail = losses[-max(1, steps // 10) :]
    return {
        "first_loss": round(losses[0], 5),
        "last_loss": round(losses[-1], 5),
        "tail_loss": round(sum(tail) / len(tail), 5),
        "train_s": round(time.time() - t0, 2),
    }
