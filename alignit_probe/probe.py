"""``Probe``: a baseline, its customized models and their concepts — the one object a notebook, the CLI and the
report work through.

    from alignit_probe import Concept, Probe, compare

    probe = Probe("path/to/sd15", custom={"cd": "custom_diffusion_output"}, concepts=[Concept("<new1>", "cat")])
    store = probe.record(["photo of a <new1> cat on the beach"], "probe.zarr", alignit=True)
    rows = compare(store)                                    # a pandas DataFrame, one row per compare --json row
    images = probe.alignit(["photo of a <new1> cat on the beach"], steps=30)   # baseline / cd / alignit
    maps = probe.attention(["photo of a <new1> cat on the beach"])          # {branch: (maps Dataset, images)}
    maps = Probe("path/to/sd15").baseline_attention(["a cat on the beach"])  # the baseline alone (DAAM's use)
    images = probe.swap("a dog on the grass", "a cat in the snow", tokens=["dog"])

Models load on first use. ``baseline`` and each customized model may be a path, a hub id, artifact SPECs
(``--custom``'s forms: ``SPEC``, ``[NAME=SPEC, …]``, ``{NAME: SPEC or [SPECs]}``) or pipelines already in memory
(``{NAME: pipeline}``: a pipeline you modified yourself, to see where your new method drifts).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import xarray as xr

from .alignit.engine import AlignITKV, AlignITOptions, alignit, alignit_kv, validate
from .alignit.generation import generate_images
from .alignit.swap import Source, check_sources, generate_swap
from .arguments import (
    as_concepts,
    as_count,
    as_dataclass,
    as_generation,
    as_names,
    as_prompts,
    as_shard,
    check_models,
    in_python,
)
from .capture.attention import AttentionSlices
from .errors import ProbeError, ProbeWarning
from .models.load import ModelSet, check_device, load_models, load_pipeline, models_from_pipelines, show_progress
from .record.branches import baseline_maps, generation_maps
from .record.run import RecordOptions, record_store
from .schema import ALIGNIT, BASELINE, DEFAULT_CUSTOM, alignit_branch

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

DTYPES = ("float32", "float16", "bfloat16")


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) not in DTYPES:
        raise ProbeError(f"unknown dtype {dtype!r}", "use " + ", ".join(DTYPES))
    return getattr(torch, str(dtype))


class Probe:
    """A baseline, any number of customized models of it, and the concepts their prompts use."""

    def __init__(
        self, baseline, custom=None, concepts=(), *, device: str | None = None, dtype="float32", progress: bool = True
    ):
        check_models(baseline, custom)
        self.baseline, self.custom = baseline, custom
        self.concepts = as_concepts(concepts)
        self.dtype = as_dtype(dtype)
        self.device = device
        self.progress = progress
        self._models: ModelSet | None = None
        self.speaks_cli = False  # the CLI's Probe: errors name its flags alone
        self._baseline_pipe = None  # the baseline alone, loaded by baseline_only() when no ModelSet is loaded
        if isinstance(baseline, (str, os.PathLike)):
            check_device(device)  # at once, before anything loads

    # ----------------------------------------------------------------------------------------------- models
    @property
    @in_python
    def models(self) -> ModelSet:
        """The loaded ``ModelSet`` (loaded on first use)."""
        if self._models is None:
            self._models = self._load()
        return self._models

    def _load(self) -> ModelSet:
        custom = self.custom
        if custom is None:
            raise ProbeError("no customized model given", "pass custom=SPEC, [NAME=SPEC, …] or {NAME: SPEC}")
        in_memory = not isinstance(self.baseline, (str, os.PathLike))
        if not isinstance(custom, (str, os.PathLike, list, tuple, dict)):
            custom = {DEFAULT_CUSTOM: custom}
        if isinstance(custom, dict) and any(
            not isinstance(v, (str, os.PathLike, list, tuple)) for v in custom.values()
        ):
            if not in_memory or not all(hasattr(v, "unet") for v in custom.values()):
                raise ProbeError(
                    "mixing pipelines in memory with paths is not supported",
                    "pass the baseline and every customized model as pipelines, or all as paths",
                )
            models = models_from_pipelines(self.baseline, dict(custom))
        elif in_memory:
            raise ProbeError(
                "a baseline pipeline in memory needs customized pipelines in memory",
                "pass custom={NAME: pipeline}, or the baseline as a path",
            )
        else:
            models = load_models(self.baseline, custom, self.device, self.dtype, self.progress)
        for w in models.warnings:
            warnings.warn(w, ProbeWarning, stacklevel=3)
        return models

    @in_python
    def baseline_only(self) -> StableDiffusionPipeline:
        """The baseline pipeline alone (no customized model needed: swaps and maps of the baseline)."""
        if self._models is not None:
            return self._models.baseline
        if not isinstance(self.baseline, (str, os.PathLike)):
            return self.baseline
        if self._baseline_pipe is None:
            show_progress(self.progress)  # (as load_models does)
            self._baseline_pipe = load_pipeline(self.baseline, check_device(self.device), self.dtype)
        return self._baseline_pipe

    # ----------------------------------------------------------------------------------------------- record
    @in_python
    def record(
        self,
        prompts: list[str],
        out: str | os.PathLike,
        *,
        batch_size: int = 8,
        clip_skip: int | None = None,
        seed: int = 0,
        store_dtype: str = "float32",
        drop_padding: bool = False,
        shard: tuple[int, int] | None = None,
        alignit: bool | AlignITOptions = False,
        summary: bool = False,
        overwrite: bool = False,
        command: list[str] | None = None,
        nodes: dict[str, xr.Dataset] | None = None,
    ) -> Path:
        """Record every stage of the baseline and each customized model on ``prompts`` into a store at ``out``
        (zarr, or netCDF for ``.nc``); ``alignit`` adds the AlignIT branches; ``summary`` stores per-token distances
        to the baseline (computed on the device) instead of the activations, for ``compare`` on large prompt sets.
        Rerunning after a crash resumes."""
        prompts = as_prompts(prompts)
        if not isinstance(out, (str, os.PathLike)):
            raise ProbeError(f"out= is {type(out).__name__}", "pass out=PATH (a .zarr folder or a .nc file)")
        if nodes is not None and not isinstance(nodes, dict):
            raise ProbeError(f"nodes= is {type(nodes).__name__}", "pass nodes={group: Dataset}, or None")
        options = RecordOptions(
            batch_size=as_count(batch_size, "batch_size"),
            clip_skip=clip_skip,
            seed=seed,
            store_dtype=store_dtype,
            drop_padding=drop_padding,
            shard=as_shard(shard),
            alignit=(AlignITOptions() if alignit is True else as_dataclass(alignit or None, AlignITOptions, "alignit")),
            summary=summary,
        )
        return record_store(
            self.models,
            self.concepts,
            prompts,
            out,
            options,
            overwrite=overwrite,
            progress=self.progress,
            command=command or [f"Probe.record, Python ({Path(sys.argv[0]).name if sys.argv[0] else 'interactive'})"],
            nodes=nodes,
        )

    # ----------------------------------------------------------------------------------------------- AlignIT
    @in_python
    def alignit_kv(
        self, prompts: list[str], options: AlignITOptions | None = None, *, model: str | None = None
    ) -> AlignITKV:
        """AlignIT's infused K/V for ``prompts`` (customized model ``model``; the only one by default)."""
        prompts = as_prompts(prompts)
        options = as_dataclass(options, AlignITOptions, "options") or AlignITOptions()
        pair = self.models.pair(model)
        validate(pair, self.concepts, options)
        return alignit_kv(pair, self.concepts, prompts, options)

    @in_python
    def alignit(
        self,
        prompts: list[str],
        options: AlignITOptions | None = None,
        *,
        model: str | None = None,
        seed: int = 0,
        steps: int = 30,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
    ) -> dict[str, list]:
        """Images of the baseline, the customized model and AlignIT, same seed: {``baseline``, NAME, ``alignit``}."""
        kw = as_generation(seed, steps, guidance_scale, height, width)
        pair = self.models.pair(model)
        akv = self.alignit_kv(prompts, options, model=pair.name)
        kw.update(output_type=output_type, progress=self.progress)
        images = {
            BASELINE: generate_images(
                pair.baseline, akv.baseline_embeds, pooled_prompt_embeds=akv.baseline_pooled, **kw
            ),
            pair.name: generate_images(pair.custom, akv.custom_embeds, pooled_prompt_embeds=akv.custom_pooled, **kw),
        }
        with alignit(pair, akv) as pipe:
            images[ALIGNIT] = generate_images(pipe, akv.cond_embeds, pooled_prompt_embeds=akv.cond_pooled, **kw)
        return images

    # ----------------------------------------------------------------------------------------------- maps
    @in_python
    def attention(
        self,
        prompts: list[str],
        options: AlignITOptions | None = None,
        *,
        model: str | None = None,
        alignit: bool = False,
        slices: AttentionSlices | None = None,
        seed: int = 0,
        steps: int = 30,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
    ) -> dict[str, tuple[xr.Dataset, list]]:
        """Cross-attention maps (and images) of the baseline, the customized model and, with ``alignit``, AlignIT:
        {branch: (Dataset with ``map`` (prompt, token, y, x), images)}; same seed for all. ``slices``: aggregation
        (``AttentionSlices(aggregation="daam", layers="daam")`` for DAAM's maps) and extra maps. Without customized
        models (``custom=None``): the baseline's maps alone (``baseline_attention``)."""
        gen = as_generation(seed, steps, guidance_scale, height, width)
        (slices or AttentionSlices()).check_steps(steps)
        if self.custom is None:
            if alignit or model is not None or options is not None:
                raise ProbeError(
                    "alignit=, model= and options= need a customized model", "pass custom=SPEC to the Probe"
                )
            return self.baseline_attention(prompts, slices=slices, **gen)
        pair = self.models.pair(model)
        akv = self.alignit_kv(prompts, options, model=pair.name)
        return generation_maps(
            pair,
            akv,
            include_alignit=alignit,
            alignit_name=alignit_branch(pair.name, len(self.models.pairs)),
            slices=slices or AttentionSlices(),
            progress=self.progress,
            **gen,
        )

    @in_python
    def baseline_attention(
        self,
        prompts: list[str],
        *,
        slices: AttentionSlices | None = None,
        seed: int = 0,
        steps: int = 30,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
    ) -> dict[str, tuple[xr.Dataset, list]]:
        """Cross-attention maps (and images) of the baseline alone, no customized model needed (DAAM's use):
        {``baseline``: (Dataset with ``map`` (prompt, token, y, x), images)}. Every token of the prompts is context
        (no concept)."""
        gen = as_generation(seed, steps, guidance_scale, height, width)
        (slices or AttentionSlices()).check_steps(steps)
        return baseline_maps(
            self.baseline_only(),
            as_prompts(prompts),
            slices=slices or AttentionSlices(),
            **gen,
            progress=self.progress,
        )

    # ----------------------------------------------------------------------------------------------- K/V swap
    @in_python
    def swap(
        self,
        key_prompt: str,
        value_prompt: str,
        *,
        key_model: str = BASELINE,
        value_model: str = BASELINE,
        denoiser: str = BASELINE,
        tokens: list[str] | None = None,
        layers: list[str] | None = None,
        blocks: list[str] | None = None,
        seed: int = 0,
        steps: int = 30,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
    ) -> dict[str, list]:
        """Keys from ``key_prompt``, values from ``value_prompt`` (all tokens, or at ``tokens``; all attn2 layers,
        or ``layers``/``blocks``): images {``A``, ``B``, ``keys A + values B``}. Models: ``baseline`` or a NAME."""
        for what, prompt in (("key_prompt", key_prompt), ("value_prompt", value_prompt)):
            if not isinstance(prompt, str):
                raise ProbeError(f"{what} takes one prompt, not {type(prompt).__name__}", f"pass {what}=TEXT")
        tokens, layers, blocks = as_names(tokens, "tokens"), as_names(layers, "layers"), as_names(blocks, "blocks")
        gen = as_generation(seed, steps, guidance_scale, height, width)
        names = {key_model, value_model, denoiser}
        if self.custom is None and names != {BASELINE}:
            roles = (("key", key_model), ("value", value_model), ("denoiser", denoiser))
            which, name = next((w, n) for w, n in roles if n != BASELINE)
            raise ProbeError(
                f"the {which} model {name!r} is not loaded: only the baseline is",
                "pass a customized model (Probe(..., custom={NAME: SPEC})), or use baseline",
            )
        if names == {BASELINE} and self.custom is None:
            pipes = {BASELINE: self.baseline_only()}
        else:
            pipes = {BASELINE: self.models.baseline, **{p.name: p.custom for p in self.models.pairs}}
        for which, name in (("key model", key_model), ("value model", value_model), ("denoiser", denoiser)):
            if name not in pipes:
                raise ProbeError(f"{which} {name!r} is not loaded", "choose among: " + ", ".join(pipes))
        check_sources(pipes, (key_prompt, key_model), (value_prompt, value_model))

        def source(name: str, prompt: str) -> Source:
            return Source(pipes[name], prompt, [] if name == BASELINE else self.concepts)

        return generate_swap(
            source(key_model, key_prompt),
            source(value_model, value_prompt),
            pipes[denoiser],
            tokens=tokens,
            layers=layers,
            blocks=blocks,
            progress=self.progress,
            **gen,
        )
