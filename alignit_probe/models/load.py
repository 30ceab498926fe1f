"""Load a baseline and its customized models: ``load_models(baseline, customs) -> ModelSet`` (any number of
customized models, each a branch of the store), ``load_pair(baseline, customs) -> ModelPair`` (exactly one).

A custom SPEC is a full pipeline directory (has ``model_index.json``: DreamBooth or any fine-tune; loaded whole),
a training checkpoint folder (``unet/``, ``text_encoder/`` … written by ``save_pretrained``: those components of the
baseline replaced, see ``components``) — either must come first — or an artifact file/folder (see ``artifacts``)
applied to a fresh load of the baseline. Several SPECs apply in order onto the same custom pipeline, e.g. a TI
embedding and then a LoRA.

``--custom NAME=SPEC`` names the model a SPEC belongs to (default ``custom``); SPECs of one NAME stack. "Did it
load?": each artifact is checked to change something (``apply``, ``verify``).
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from warnings import warn

import torch

from ..capture import sites
from ..errors import ProbeError, ProbeWarning
from ..schema import DEFAULT_CUSTOM
from .apply import Artifact, apply_artifact, apply_parsed
from .artifacts import NO_TOKEN_FILE, artifact_paths, first_line, is_pipeline_dir, parse_artifact
from .components import check_components, component_folders, ema_note, load_components
from .pipes import SD, SUPPORTED, TEXT_PARTS, not_supported, pipeline_copy, text_copy
from .quiet import import_pipelines
from .specs import check_device, check_model_name, mistyped_path, parse_custom_specs, resolve_spec, stacking_note
from .verify import differs, stages

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = ["Artifact", "ModelPair", "ModelSet", "apply_artifact", "load_models", "load_pair", "load_pipeline"]

WHOLE = {"pipeline": "full pipeline", "checkpoint": "training checkpoint"}  # SPECs that replace weights
TEXT_ONLY = ("textual_inversion", "a1111_embedding")  # artifacts that only add token embeddings
METHODS = {
    "textual_inversion": "textual_inversion",
    "a1111_embedding": "textual_inversion",
    "custom_diffusion": "custom_diffusion",
    "lora": "lora",
}


@dataclass
class ModelPair:
    """A baseline and one customized model (``name``: its branch in the store)."""

    baseline: StableDiffusionPipeline
    custom: StableDiffusionPipeline
    baseline_id: str
    custom_ids: list[str]
    method: str
    artifacts: list[Artifact] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    name: str = DEFAULT_CUSTOM


@dataclass
class ModelSet:
    """One baseline and any number of customized models of it (checkpoints of one run, or several methods)."""

    baseline: StableDiffusionPipeline
    baseline_id: str
    pairs: list[ModelPair]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.pairs]

    def pair(self, name: str | None = None) -> ModelPair:
        """The customized model ``name`` with the baseline (the only one when ``name`` is None)."""
        if name is None:
            if len(self.pairs) != 1:
                raise ProbeError(
                    f"{len(self.pairs)} customized models are loaded ({', '.join(self.names)})", "name the one to use"
                )
            return self.pairs[0]
        for p in self.pairs:
            if p.name == name:
                return p
        raise ProbeError(f"no customized model named {name!r}", "choose among: " + ", ".join(self.names))

    @property
    def warnings(self) -> list[str]:
        return [w for p in self.pairs for w in p.warnings]


def show_progress(enabled: bool) -> None:
    """diffusers' and transformers' own progress bars (loading, denoising) on or off, as ours."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        (lib.enable_progress_bar if enabled else lib.disable_progress_bar)()


def note(enabled: bool, text: str) -> None:
    """A progress line on stderr (which model the loading bars that follow belong to)."""
    if enabled:
        print(text, file=sys.stderr)


def pipeline_class(model: str | Path) -> str | None:
    """The ``_class_name`` in the ``model_index.json`` of a pipeline directory (None for a hub id: read when it
    loads). Anything but a supported class is refused here, before any weights are read."""
    model = str(model)
    p = Path(model).expanduser()
    if not p.exists():
        return None
    import json

    try:
        index = json.loads((p / "model_index.json").read_text())
    except (OSError, ValueError):
        raise ProbeError(f"{p / 'model_index.json'} is not valid JSON", "save the pipeline again") from None
    cls = index.get("_class_name") if isinstance(index, dict) else None
    if cls not in SUPPORTED:
        raise ProbeError(*not_supported(model, cls or "pipeline of unknown class"))
    return cls


def check_pipeline_path(model: str | Path) -> str:
    """``model`` as given, checked without loading anything: an existing diffusers directory of a supported
    pipeline class, or something shaped like a hub id (org/name)."""
    model = str(model)
    p = Path(model).expanduser()
    if p.exists():
        if not is_pipeline_dir(p):
            raise ProbeError(
                f"{model} is not a diffusers pipeline directory (no model_index.json)",
                "give a directory written by save_pretrained, or a hub id",
            )
        pipeline_class(p)
        return str(p)
    if model.startswith((".", "/", "~")) or model.count("/") != 1 or model.endswith("/"):
        raise ProbeError(f"model {model} does not exist", "check the path, or give a hub id like org/name")
    typo = mistyped_path(model)
    if typo:
        raise typo
    return model


CHANGED_NOTHING = "changed nothing: every stage is bit-identical to the baseline"  # a customized model's warning
PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face hub (``HF_ENDPOINT``) cannot be reached from here, found in at most ``timeout`` seconds:
    its host does not resolve or takes no connection. None when it may be reached (also whenever a proxy is set:
    the proxy decides)."""
    if any(os.environ.get(k) for k in PROXIES):
        return None
    from huggingface_hub import constants

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{host} cannot be reached from this machine ({e.strerror or type(e).__name__})"
    return None


def load_pipeline(
    model: str, device: str | torch.device | None = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    """The pipeline of a diffusers directory or hub id, of the class its ``model_index.json`` names
    (``StableDiffusionPipeline`` without safety checker, or ``StableDiffusionXLPipeline`` without watermarker)."""
    import diffusers

    import_pipelines()
    model = check_pipeline_path(model)
    hub = not Path(model).exists()

    def load(local_only: bool) -> StableDiffusionPipeline:
        config = diffusers.DiffusionPipeline.load_config
        cls = pipeline_class(model) or config(model, local_files_only=local_only).get("_class_name")
        if cls not in SUPPORTED:
            raise ProbeError(*not_supported(model, cls))
        extra = dict(safety_checker=None, requires_safety_checker=False) if cls == SD else dict(add_watermarker=False)
        return getattr(diffusers, cls).from_pretrained(model, dtype=dtype, local_files_only=local_only, **extra)

    try:
        try:  # a hub id: the local cache first, so that a cached model never waits on the network
            pipe = load(local_only=hub)
        except ProbeError:
            raise
        except Exception:
            if hub and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
                raise ProbeError(
                    f"cannot load pipeline {model}: it is not in the local Hugging Face cache, and HF_HUB_OFFLINE "
                    "is set (no download is tried)",
                    f"download it where there is network (huggingface-cli download {model}) into this machine's "
                    "cache, or pass a local pipeline directory",
                ) from None
            if not hub:
                raise
            why = hub_unreachable()
            if why:  # say so at once: huggingface_hub would retry for ~30 s before failing
                raise ProbeError(
                    f"cannot load pipeline {model}: it is not in the local Hugging Face cache and {why}",
                    f"download it where there is network (huggingface-cli download {model}) into this machine's "
                    "cache, or pass a local pipeline directory",
                ) from None
            print(f"{model} is not in the local Hugging Face cache: downloading it", file=sys.stderr)
            pipe = load(local_only=False)
    except ProbeError:
        raise
    except Exception as e:
        if hub:
            raise ProbeError(
                f"cannot load pipeline {model}: it is not in the local Hugging Face cache and could not be "
                f"downloaded ({first_line(e)})",
                f"download it where there is network (huggingface-cli download {model}) into this machine's cache, "
                "or pass a local pipeline directory",
            ) from e
        raise ProbeError(
            f"cannot load pipeline {model} ({first_line(e)})", "check the directory (save_pretrained writes it)"
        ) from e
    return pipe.to(device)


# ----------------------------------------------------------------------------------------------------------- models
def _parse_specs(name: str, customs: list[str]) -> list:
    """The artifacts among one model's SPECs, read and recognized (a pipeline directory may only come first)."""
    kinds = [resolve_spec(c) for c in customs]
    for i, kind in enumerate(kinds[1:], 1):
        if kind in WHOLE:
            raise ProbeError(
                f"{WHOLE[kind]} {customs[i]} must be the first SPEC of model {name} (it replaces the model's weights)",
                "put it first, followed by the artifacts to apply onto it",
            )
    parsed = [
        parse_artifact(a) for spec in (customs[1:] if kinds[0] in WHOLE else customs) for a in artifact_paths(spec)
    ]
    if any(p.embeddings for p in parsed):  # Custom Diffusion weights stacked with the token's own embedding file
        for p in parsed:
            p.warnings = [w for w in p.warnings if not w.startswith(NO_TOKEN_FILE)]
    return parsed


def _custom_model(
    name: str, customs: list[str], parsed: list, base, baseline: str, device, dtype, progress: bool
) -> ModelPair:
    kinds = [resolve_spec(c) for c in customs]
    replaced = (component_folders(customs[0]) or {}) if kinds[0] == "checkpoint" else {}  # a checkpoint's parts
    if replaced:
        check_components(replaced, base)
    note(progress, f"loading customized model {name}: {' + '.join(customs)}")
    if kinds[0] not in WHOLE and all(getattr(a, "kind", None) in TEXT_ONLY for a in parsed):
        custom = text_copy(base)  # the baseline's UNet and VAE, shared: nothing applied touches them
    elif kinds[0] == "pipeline":
        custom = load_pipeline(customs[0], device, dtype)
    else:  # the baseline's weights, copied in memory (not read again); the VAE shared: nothing applied touches it
        custom = pipeline_copy(base, tuple(p for p in (*TEXT_PARTS, "unet") if p not in replaced))
    if replaced:
        load_components(custom, replaced)
    if sites.layout(base.unet) != sites.layout(custom.unet):
        raise ProbeError(
            f"{customs[0]} and baseline {baseline} have different cross-attention layouts (attn2 paths/heads/widths)",
            "compare a customized model with the baseline it was trained from",
        )
    methods = ["dreambooth"] if kinds[0] in WHOLE else []
    warnings = ema_note(customs[0]) if kinds[0] == "checkpoint" else []
    if kinds[0] in WHOLE and not differs(stages(base), after := stages(custom), after.keys()):
        shown = customs[0] if name == DEFAULT_CUSTOM else f"{name} ({customs[0]})"
        warnings.append(f"custom model {shown} {CHANGED_NOTHING}")
    artifacts = []
    from tqdm.auto import tqdm

    for one in tqdm(parsed, desc=f"applying customizations ({name})", disable=not progress or len(parsed) < 2):
        art = apply_parsed(custom, one)
        artifacts.append(art)
        warnings.extend(art.warnings)
        if METHODS[art.kind] not in methods:
            methods.append(METHODS[art.kind])
    custom.to(device)
    return ModelPair(base, custom, str(baseline), customs, "+".join(methods), artifacts, warnings, name)


def load_models(
    baseline: str,
    customs: str | Path | Sequence[str | Path] | Mapping[str, str | Path | Sequence[str | Path]],
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> ModelSet:
    """The baseline and every customized model. ``customs``: ``--custom`` values (``[NAME=]SPEC``), or a dict
    {name: SPEC or SPECs}. Every path and artifact file is checked before any model is loaded."""
    if isinstance(customs, (str, Path)):
        customs = [customs]
    by_name = (
        {str(k): [str(x) for x in ([v] if isinstance(v, (str, Path)) else v)] for k, v in customs.items()}
        if isinstance(customs, dict)
        else parse_custom_specs([str(c) for c in customs])
    )
    if not by_name:
        raise ProbeError("no customized model given", "pass --custom SPEC (a pipeline directory or an artifact)")
    check_pipeline_path(baseline)
    base_cls = pipeline_class(baseline)
    for name, specs in by_name.items():
        check_model_name(name)
        for spec in specs:
            if resolve_spec(spec) == "checkpoint":
                check_components(component_folders(spec), baseline)
            if resolve_spec(spec) == "pipeline":
                cls = pipeline_class(check_pipeline_path(spec))
                if None not in (cls, base_cls) and cls != base_cls:
                    raise ProbeError(
                        f"customized model {name} ({spec}) is a {cls} but baseline {baseline} is a {base_cls}",
                        "compare a customized model with the baseline it was trained from",
                    )
    parsed = {name: _parse_specs(name, specs) for name, specs in by_name.items()}  # bad files fail before any load
    stacked = by_name.get(DEFAULT_CUSTOM, [])
    said = len(stacked) > 1 and stacking_note(stacked, [a.kind for a in parsed[DEFAULT_CUSTOM]])
    if said:
        warn(said, ProbeWarning, stacklevel=2)
    device = check_device(device)
    show_progress(progress)
    note(progress, f"loading baseline {baseline}")
    base = load_pipeline(baseline, device, dtype)
    pairs = [
        _custom_model(name, specs, parsed[name], base, str(baseline), device, dtype, progress)
        for name, specs in by_name.items()
    ]
    return ModelSet(base, str(baseline), pairs)


def load_pair(
    baseline: str,
    customs: str | Path | Sequence[str | Path] | Mapping[str, str | Path | Sequence[str | Path]],
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> ModelPair:
    """Baseline and one customized pipeline, every custom SPEC applied in order, each artifact verified."""
    models = load_models(baseline, customs, device, dtype, progress)
    if len(models.pairs) != 1:
        raise ProbeError(
            f"{len(models.pairs)} customized models given where one is expected",
            "pass SPECs of one model (no different NAME= prefixes)",
        )
    return models.pairs[0]


def models_from_pipelines(
    baseline: StableDiffusionPipeline, customs: dict, baseline_id: str = "in-memory baseline"
) -> ModelSet:
    """A ``ModelSet`` of pipelines already in memory (a user's own modified pipeline: the debugging case).
    ``customs``: {name: pipeline}. Each is checked to differ from the baseline on the text path or the UNet."""
    pairs = []
    for name, pipe in customs.items():
        check_model_name(name)
        if pipe is baseline:
            raise ProbeError(
                f"customized model {name} is the baseline pipeline object itself",
                "modify a copy (e.g. load the baseline twice) and pass that",
            )
        if type(pipe).__name__ not in SUPPORTED or type(pipe) is not type(baseline):
            cls, base_cls = type(pipe).__name__, type(baseline).__name__
            raise ProbeError(
                *not_supported(f"customized model {name}", cls)
                if cls not in SUPPORTED
                else (
                    f"customized model {name} is a {cls} but the baseline is a {base_cls}",
                    "compare a customized model with the baseline it was made from",
                )
            )
        if sites.layout(baseline.unet) != sites.layout(pipe.unet):
            raise ProbeError(
                f"customized model {name} has a different cross-attention layout than the baseline",
                "compare a customized model with the baseline it was made from",
            )
        warnings = []
        same_vocab = len(pipe.tokenizer) == len(baseline.tokenizer) and torch.equal(
            pipe.text_encoder.get_input_embeddings().weight, baseline.text_encoder.get_input_embeddings().weight
        )
        if same_vocab and not differs(stages(baseline), after := stages(pipe), after.keys()):
            warnings.append(f"custom model {name} {CHANGED_NOTHING}")
        pairs.append(
            ModelPair(
                baseline, pipe, baseline_id, [f"<in-memory {type(pipe).__name__}>"], "in-memory", [], warnings, name
            )
        )
    return ModelSet(baseline, baseline_id, pairs)
