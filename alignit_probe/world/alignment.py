"""Prompt alignment on the world, measured exactly: rows ``{"model", "attribute", "accuracy", "ci_low", "ci_high",
"n"}`` with 95 % bootstrap intervals over samples.

* Baseline alone: held-out captions (``scenes.HELD_OUT``), every attribute they name.
* With a customized model and its concept: prompts ``a photo of a <new1> triangle on the left on a black
  background`` — a context the references never showed (another background than theirs, any position). The
  baseline draws the prompt without the concept token, the customized model and AlignIT the prompt with it, from
  the same noise. Text alignment = accuracy of the context attributes; image alignment = ``concept_fidelity``
  (the object's shape, colour and pattern are the concept's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .concept import CONTEXT, IDENTITY, WorldConcept
from .evaluate import correctness, world_images
from .model import GUIDANCE, HEIGHT, STEPS, WIDTH
from .scenes import ATTRIBUTES, sample_scenes
from .scorer import score_images

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    from ..probe import Probe

FIDELITY = "concept_fidelity"
BATCH = 50  # samples per generation call: part of what a seed means, so fixed


def bootstrap_ci(values: np.ndarray, seed: int = 0, resamples: int = 2000) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of ``values`` (NaN, NaN when empty)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def rows_of(model: str, table: dict[str, np.ndarray], seed: int = 0) -> list[dict]:
    """One row per attribute of ``table`` (per-sample 1/0, NaN = not asked)."""
    rows = []
    for attribute, values in table.items():
        asked = values[~np.isnan(values)]
        if asked.size == 0:
            continue
        low, high = bootstrap_ci(asked, seed)
        rows.append(
            dict(
                model=model,
                attribute=attribute,
                accuracy=round(float(asked.mean()), 4),
                ci_low=round(low, 4),
                ci_high=round(high, 4),
                n=int(asked.size),
            )
        )
    return rows


def baseline_rows(
    pipe: StableDiffusionPipeline,
    samples: int,
    seed: int = 0,
    progress: bool = False,
    *,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
) -> list[dict]:
    """The baseline's accuracy per attribute on ``samples`` held-out captions (``steps`` DDIM steps, guidance
    ``guidance``: the world's sampler settings by default)."""
    scenes = sample_scenes(samples, torch.Generator().manual_seed(seed), "held_out")
    seeds = [seed * 100_003 + i for i in range(samples)]
    images = world_images(
        pipe, scenes.captions(), seeds, batch=BATCH, steps=steps, guidance=guidance, progress=progress
    )
    return rows_of("baseline", correctness(images, scenes), seed)


@dataclass
class ConceptPrompts:
    """The evaluation prompts of a concept: per sample its context (background, position) and both prompts."""

    contexts: list[dict[str, str]]
    with_token: list[str]
    without_token: list[str]


def concept_prompts(concept: WorldConcept, samples: int, seed: int = 0) -> ConceptPrompts:
    """Contexts with a background other than the references' and any position, seeded."""
    rng = np.random.default_rng(seed)
    others = [b for b in ATTRIBUTES["background"] if b != concept.background]
    contexts = [
        {"background": others[rng.integers(len(others))], "position": ATTRIBUTES["position"][rng.integers(3)]}
        for _ in range(samples)
    ]
    return ConceptPrompts(
        contexts,
        [concept.prompt(True, **c) for c in contexts],
        [concept.prompt(False, **c) for c in contexts],
    )


def concept_table(images: np.ndarray, concept: WorldConcept, contexts: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """Per sample: each context attribute right (1/0) and the concept's identity right (shape, colour, pattern)."""
    scored = score_images(images)
    table = {a: np.array([float(s[a] == c[a]) for s, c in zip(scored, contexts)]) for a in CONTEXT}
    want = {a: concept.attributes[a] for a in IDENTITY if a in concept.attributes}
    table[FIDELITY] = np.array([float(all(s[a] == v for a, v in want.items())) for s in scored])
    return table


def concept_images(
    probe: Probe,
    concept: WorldConcept,
    samples: int,
    seed: int = 0,
    variants: dict | None = None,
    model: str | None = None,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    with_baseline: bool = True,
) -> tuple[ConceptPrompts, dict[str, np.ndarray]]:
    """The evaluation prompts and images (sample, 32, 32, 3) of the baseline (unless ``with_baseline`` is false),
    the customized model (``custom``) and each AlignIT variant ({label: AlignITOptions}), all from the same noise:
    batches of ``BATCH`` samples, batch ``start`` seeded ``seed * 1_000_003 + start``."""
    from ..alignit.engine import alignit
    from ..alignit.generation import generate_images

    prompts = concept_prompts(concept, samples, seed)
    pair = probe.models.pair(model)
    kw = dict(steps=steps, guidance_scale=guidance, height=HEIGHT, width=WIDTH, output_type="np", progress=False)
    plans = variants or {None: None}  # without variants: the encodings only, no AlignIT images
    out: dict[str, list] = {"baseline": [], "custom": [], **{label: [] for label in variants or {}}}
    chunks = range(0, samples, BATCH)
    if probe.progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="world eval", unit="batch")
    for start in chunks:
        batch = prompts.with_token[start : start + BATCH]
        kw["seed"] = batch_seed(seed, start)
        akvs = {label: probe.alignit_kv(batch, options, model=pair.name) for label, options in plans.items()}
        first = next(iter(akvs.values()))
        if with_baseline:
            out["baseline"].append(np.asarray(generate_images(pair.baseline, first.baseline_embeds, **kw)))
        out["custom"].append(np.asarray(generate_images(pair.custom, first.custom_embeds, **kw)))
        for label, akv in akvs.items():
            if label is not None:
                with alignit(pair, akv) as pipe:
                    out[label].append(np.asarray(generate_images(pipe, akv.cond_embeds, **kw)))
    return prompts, {label: np.concatenate(chunks_) for label, chunks_ in out.items() if chunks_}


def batch_seed(seed: int, start: int) -> int:
    """The noise seed of the evaluation batch whose first sample is ``start``."""
    return seed * 1_000_003 + start


def concept_rows(
    probe: Probe, concept: WorldConcept, samples: int, seed: int = 0, variants: dict | None = None, **options: Any
) -> list[dict]:
    """Rows of ``concept_images(probe, concept, samples, seed, variants, **options)`` (``model``, ``steps``,
    ``guidance``, ``with_baseline``); the customized model's labelled ``custom``."""
    prompts, images = concept_images(probe, concept, samples, seed, variants, **options)
    return scored_rows(images, concept, prompts.contexts, seed)


def scored_rows(
    images: dict[str, np.ndarray], concept: WorldConcept, contexts: list[dict[str, str]], seed: int = 0
) -> list[dict]:
    """Rows of each label's images ({label: (sample, 32, 32, 3)}) against the contexts their prompts asked for."""
    return [r for label, imgs in images.items() for r in rows_of(label, concept_table(imgs, concept, contexts), seed)]


def readouts(images: np.ndarray, concept: WorldConcept, contexts: list[dict[str, str]]) -> list[str]:
    """What the scorer reads in each image, against what its prompt asked: ``black ✓  left ✗  concept ✓``."""
    table = concept_table(images, concept, contexts)
    marks = {1.0: "✓", 0.0: "✗"}
    out = []
    for i, context in enumerate(contexts):
        parts = [f"{context[a]} {marks[float(table[a][i])]}" for a in CONTEXT]
        out.append("  ".join(parts + [f"concept {marks[float(table[FIDELITY][i])]}"]))
    return out


ROW_KEYS = ("model", "attribute", "accuracy", "ci_low", "ci_high", "n")
