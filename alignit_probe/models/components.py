"""Training checkpoints that hold model components, not a pipeline: DreamBooth / full fine-tuning.

diffusers' ``train_dreambooth.py`` (and ``train_text_to_image[_sdxl].py``) save intermediate checkpoints with
accelerate's ``save_state`` and a hook that writes each trained model with ``save_pretrained`` into a subfolder:
``checkpoint-500/unet/`` and, with ``--train_text_encoder``, ``checkpoint-500/text_encoder/`` (no
``model_index.json``); diffusers' DreamBooth guide loads them into the baseline pipeline by hand. A SPEC that is
such a folder, or one component folder itself (``checkpoint-500/unet``), replaces those components of a fresh load
of the baseline: the customized model is the baseline with the trained components, as at inference.

Everything a file can tell is checked before any model loads (``component_folders``): each folder's
``config.json`` names a class the baseline's component has, and a weights file is there. After loading
(``load_components``), the widths that the text path depends on must match the baseline's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ProbeError
from .artifacts import first_line
from .pipes import placement
from .training_folders import COMPONENT_FOLDERS

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

COMPONENTS = COMPONENT_FOLDERS  # the component folders a training checkpoint may hold
WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
)
CHECKPOINT = "a training checkpoint folder with unet/ (and text_encoder/) written by save_pretrained"


def _config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        raise ProbeError(f"{folder / 'config.json'} is not valid JSON", "save the component again") from None
    if not isinstance(config, dict):
        raise ProbeError(f"{folder / 'config.json'} is not a model config", "save the component again")
    return config


def _class_of(config: dict) -> str | None:
    """diffusers configs name their class in ``_class_name``, transformers configs in ``architectures``."""
    return config.get("_class_name") or next(iter(config.get("architectures") or []), None)


def component_folders(path: str | Path) -> dict[str, Path] | None:
    """{component: folder} when ``path`` is a checkpoint folder with component subfolders (``unet/``,
    ``text_encoder/``, ``text_encoder_2/``, each with a ``config.json``), or one component folder itself (named
    like a component, or a UNet's); None when it is neither. A folder found this way must hold weights."""
    p = Path(path).expanduser()
    if not p.is_dir() or (p / "model_index.json").is_file():
        return None
    if (p / "config.json").is_file():
        name = p.name if p.name in COMPONENTS else None
        if name is None and _class_of(_config(p)) == "UNet2DConditionModel":
            name = "unet"
        found = {name: p} if name else {}
    else:
        found = {c: p / c for c in COMPONENTS if (p / c / "config.json").is_file()}
    for folder in found.values():
        _config(folder)
        if not any((folder / w).is_file() for w in WEIGHTS):
            raise ProbeError(
                f"{folder} has a config.json but no weights ({WEIGHTS[0]} or {WEIGHTS[3]})",
                "copy the whole folder that save_pretrained wrote",
            )
    return found or None


def component_classes(baseline: StableDiffusionPipeline | str | Path) -> dict[str, str] | None:
    """{component: class name} of a loaded baseline, or of a baseline directory's ``model_index.json`` (None for a
    hub id: checked once it is loaded)."""
    if not isinstance(baseline, (str, Path)):
        return {c: type(getattr(baseline, c)).__name__ for c in COMPONENTS if getattr(baseline, c, None) is not None}
    index = Path(baseline).expanduser() / "model_index.json"
    if not index.is_file():
        return None
    entries = json.loads(index.read_text())
    return {c: entries[c][1] for c in COMPONENTS if isinstance(entries.get(c), list) and entries[c][1]}


def ema_note(path: str | Path) -> list[str]:
    """A warning when a checkpoint also holds EMA weights (``train_text_to_image*.py --use_ema``: ``unet_ema/``),
    which are what its final pipeline would have used."""
    p = Path(path).expanduser()
    if (p / "unet" / "config.json").is_file() and (p / "unet_ema" / "config.json").is_file():
        return [
            f"checkpoint {p} also holds EMA weights (unet_ema/); its unet/ was used — pass {p / 'unet_ema'} "
            "to probe the EMA UNet (the one a final pipeline of that run holds)"
        ]
    return []


def check_components(found: dict[str, Path], baseline: StableDiffusionPipeline | str | Path) -> None:
    """Each component exists in the baseline (a pipeline, or its directory: checked before anything loads) and its
    config names the baseline component's class."""
    classes = component_classes(baseline)
    if classes is None:
        return
    for name, folder in found.items():
        if name not in classes:
            raise ProbeError(
                f"{folder} is a {name}, which the baseline ({', '.join(sorted(classes))}) lacks",
                "use the checkpoint with the baseline it was trained from",
            )
        cls = _class_of(_config(folder))
        if cls is not None and cls != classes[name]:
            raise ProbeError(
                f"{folder} holds a {cls} but the baseline's {name} is a {classes[name]}",
                "use the checkpoint with the baseline it was trained from",
            )


def load_components(pipe: StableDiffusionPipeline, found: dict[str, Path]) -> None:
    """Replace ``pipe``'s components by the checkpoint's, in ``pipe``'s device and dtype (in place)."""
    check_components(found, pipe)
    for name, folder in found.items():
        current = getattr(pipe, name)
        device, dtype = placement(current)
        try:
            new = type(current).from_pretrained(str(folder), dtype=dtype)
        except Exception as e:
            fix = "copy the whole folder that save_pretrained wrote"
            raise ProbeError(f"cannot load {name} from {folder} ({first_line(e)})", fix) from e
        _check_widths(name, folder, current, new, pipe)
        pipe.register_modules(**{name: new.to(device).eval()})


def _check_widths(name: str, folder: Path, old, new, pipe: StableDiffusionPipeline) -> None:
    if name == "unet":
        keys = ("cross_attention_dim", "block_out_channels", "in_channels")
        odd = [k for k in keys if old.config.get(k) != new.config.get(k)]
    else:
        odd = [k for k in ("hidden_size", "projection_dim") if getattr(old.config, k, 0) != getattr(new.config, k, 0)]
        tokenizer = pipe.tokenizer if name == "text_encoder" else pipe.tokenizer_2
        if new.get_input_embeddings().weight.shape[0] < len(tokenizer):
            odd.append("vocabulary")
    if odd:
        raise ProbeError(
            f"{name} in {folder} differs from the baseline's in {', '.join(map(str, odd))}",
            "use the checkpoint with the baseline it was trained from",
        )
