"""Pretraining the world model (``alignit-probe world pretrain``): the reproducible recipe behind the shipped weights.

1. The VAE learns to reconstruct rendered scenes (MSE plus a small KL term); its scaling factor is set so latents
   have unit standard deviation.
2. The UNet (and, at a lower learning rate, the text encoder) learns v-prediction on fresh scenes every step
   (rendered on the device), with 10 % empty captions for classifier-free guidance and an EMA of the weights.
3. Every ``eval_every`` steps the EMA model samples held-out captions with the world's sampler settings; the
   scorer reads the images. The checkpoint kept is the one with the best worst-attribute accuracy (loss keeps falling
   long after accuracy peaks, so it does not choose), and the curve is written next to it.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
import torch
import torch.nn.functional as F

from .evaluate import sample_accuracy
from .model import assemble, weights_state, world_components
from .scenes import render, sample_scenes
from .train_loop import noised

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

VERSION = "world-1"


@dataclass
class Recipe:
    steps: int = 6000
    batch: int = 128
    lr: float = 1e-3
    text_lr: float = 1e-4  # 0 freezes the (seeded, random) text encoder
    warmup: int = 200
    ema: float = 0.999
    uncond: float = 0.1
    vae_steps: int = 1500
    vae_lr: float = 2e-3
    eval_every: int = 500
    eval_samples: int = 192
    seed: int = 0
    max_seconds: float = 0.0  # > 0: fit the step count to this wall-clock budget (measured over the first steps)


def _log(msg: str, log) -> None:
    print(msg, flush=True)
    if log is not None:
        log.write(msg + "\n")
        log.flush()


def train_vae(
    vae: AutoencoderKL, recipe: Recipe, device: torch.device, gen: torch.Generator, log: TextIO | None = None
) -> float:
    """Fit the VAE to rendered scenes; returns the scaling factor (1 / std of latents)."""
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    for step in range(recipe.vae_steps):
        x = render(sample_scenes(recipe.batch, gen, "any")) * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        loss = F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = recipe.vae_lr * 0.5 * (1 + np.cos(np.pi * (step + 1) / recipe.vae_steps))
        if step % 250 == 0 or step == recipe.vae_steps - 1:
            _log(f"vae step {step} mse {F.mse_loss(rec, x).item():.5f}", log)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        x = render(sample_scenes(1024, gen, "any")) * 2 - 1
        z = vae.encode(x).latent_dist.sample(generator=gen)
    return float(1.0 / z.std())


def pretrain(out: str | Path, recipe: Recipe, device: str = "cpu", log_path: str | Path | None = None) -> dict:
    """Train the world model with ``recipe`` on ``device``; writes ``out`` (safetensors) and ``out``.curve.json.
    Returns the best validation accuracies."""
    from safetensors.torch import save_file

    t_start = time.time()
    device = torch.device(device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a", encoding="utf-8") if log_path else None
    gen = torch.Generator(device).manual_seed(recipe.seed)
    parts = world_components(recipe.seed)
    scale = train_vae(parts["vae"], recipe, device, gen, log)
    parts["vae"].register_to_config(scaling_factor=scale)
    _log(f"vae scaling factor {scale:.4f}", log)
    unet, te, tok, sched = (
        parts["unet"].to(device),
        parts["text_encoder"].to(device),
        parts["tokenizer"],
        parts["scheduler"],
    )
    unet.train()
    te.train(recipe.text_lr > 0).requires_grad_(recipe.text_lr > 0)
    groups = [{"params": list(unet.parameters()), "lr": recipe.lr, "weight_decay": 1e-2}]
    if recipe.text_lr > 0:
        groups.append({"params": list(te.parameters()), "lr": recipe.text_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups)
    base_lrs = [g["lr"] for g in groups]
    ema = {"unet": copy.deepcopy(unet).eval().requires_grad_(False), "text_encoder": copy.deepcopy(te).eval()}
    ema["text_encoder"].requires_grad_(False)
    cache: dict[str, torch.Tensor] = {}

    def ids_of(captions: list[str]) -> torch.Tensor:
        new = [c for c in set(captions) if c not in cache]
        if new:
            enc = tok(new, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
            cache.update(zip(new, enc.input_ids.to(device)))
        return torch.stack([cache[c] for c in captions])

    alphas = sched.alphas_cumprod.to(device)
    best, curve, t0, every = None, [], time.time(), recipe.eval_every
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    total, step = recipe.steps, 0
    while step < total:
        step += 1
        if step == 21:
            t20 = time.time()
        if step == 71 and recipe.max_seconds > 0:
            per_step = (time.time() - t20) / 50 * (1 + 0.1)  # evaluations take about 10 % more
            total = max(100, min(recipe.steps, int((recipe.max_seconds - (time.time() - t_start)) / per_step)))
            every = max(50, total // 10)
            _log(f"{per_step * 1000:.0f} ms/step: {total} steps, evaluating every {every}", log)
        scenes = sample_scenes(recipe.batch, gen, "train")
        captions = scenes.captions()
        drop = torch.rand(len(captions), generator=gen, device=device) < recipe.uncond
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        with torch.no_grad():
            z = parts["vae"].encode(render(scenes) * 2 - 1).latent_dist.sample(generator=gen) * scale
        noisy, t, target = noised(z, alphas, gen)
        with autocast:
            cond = te(ids_of(captions))[0]
            pred = unet(noisy, t, cond).sample
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        warm = min(1.0, step / recipe.warmup)
        cos = 0.5 * (1 + np.cos(np.pi * min(step / total, 1.0)))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * warm * (0.1 + 0.9 * cos)
        with torch.no_grad():
            for key, live in (("unet", unet), ("text_encoder", te)):
                for pe, p in zip(ema[key].parameters(), live.parameters()):
                    pe.lerp_(p.detach(), 1 - recipe.ema)
        if step % 100 == 0:
            _log(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", log)
        if step % every == 0 or step == total:
            pipe = assemble(dict(parts, unet=ema["unet"], text_encoder=ema["text_encoder"]))
            acc = sample_accuracy(pipe, recipe.eval_samples, 1234, "held_out", 256 if device.type == "cuda" else 64)
            worst = min(acc.values())
            curve.append({"step": step, "loss": round(loss.item(), 5), "seconds": round(time.time() - t0, 1), **acc})
            _log(f"eval step {step}: " + " ".join(f"{k} {v:.3f}" for k, v in acc.items()), log)
            if best is None or worst > best[0]:
                state, meta = weights_state(dict(parts, unet=ema["unet"], text_encoder=ema["text_encoder"]))
                best = (worst, step, acc)
                meta = dict(meta, version=VERSION, seed=str(recipe.seed), step=str(step))
                meta.update(recipe=json.dumps(asdict(recipe)), accuracy=json.dumps(acc))
                save_file(state, str(out), metadata=meta)  # the best so far: a run cut short still leaves it
            Path(str(out) + ".curve.json").write_text(json.dumps(curve, indent=1))
            unet.train()
    worst, step, acc = best
    _log(f"kept step {step} (worst attribute {worst:.3f}) → {out}", log)
    if log:
        log.close()
    return acc
