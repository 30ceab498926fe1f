"""What the user names before anything loads: customized-model SPECs (``[NAME=]SPEC``), model names, devices.
Everything here is checked at once, so a typo never waits for a model to load."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ProbeError
from ..schema import DEFAULT_CUSTOM
from .artifacts import is_pipeline_dir
from .components import component_folders

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
RESERVED = ("baseline", "alignit")


def mistyped_path(spec: str) -> ProbeError | None:
    """The error for a hub-id-shaped name (``out/nonexist``) that is a local path mistyped: its folder exists here,
    and no hub model of that id is in the local cache. None where it may well be a hub id."""
    parent = Path(spec).expanduser().parent
    if str(parent) in ("", ".") or not parent.is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(spec, "model_index.json"), str):
            return None
    except ValueError:  # not a valid repo id (HFValidationError): a path for sure
        pass
    return ProbeError(
        f"{spec} does not exist (the folder {parent}/ does, and no hub model {spec} is in the local cache)",
        f"check the path: ls {parent}",
    )


def resolve_spec(spec: str) -> str:
    """'pipeline', 'checkpoint' (component folders, ``components``) or 'artifact', checked before any model is
    loaded."""
    p = Path(spec).expanduser()
    if is_pipeline_dir(p):
        return "pipeline"
    if component_folders(p):
        return "checkpoint"
    if p.exists():
        return "artifact"
    if not spec.startswith((".", "/", "~")) and spec.count("/") == 1 and not p.suffix and not spec.endswith("/"):
        typo = mistyped_path(spec)
        if typo:
            raise typo
        return "pipeline"  # a hub id
    raise ProbeError(
        f"customization {spec} does not exist",
        "check the path (a pipeline directory, a training checkpoint folder, or an artifact file or folder)",
    )


def parse_custom_specs(specs: list[str]) -> dict[str, list[str]]:
    """``--custom [NAME=]SPEC`` values → {model name: SPECs applied in order}. Without ``NAME=`` the model is
    ``custom``; a repeated NAME stacks SPECs onto one model. A SPEC that exists as a path is never split."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        spec = str(spec)
        name, sep, rest = spec.partition("=")
        if not sep or Path(spec).exists():
            name, rest = DEFAULT_CUSTOM, spec
        else:
            check_model_name(name)
            if not rest:
                raise ProbeError(f"--custom {spec!r} names model {name!r} but no SPEC", f"write --custom {name}=PATH")
        out.setdefault(name, []).append(rest)
    return out


def stacking_note(specs: list[str], kinds: list[str]) -> str | None:
    """What to say when several ``--custom`` SPECs without ``NAME=`` stack into one model (``kinds``: the kinds of
    their artifacts): nothing where they complement each other (Custom Diffusion with its token file, embeddings of
    several tokens, a LoRA with its pivotal-tuning embeddings, artifacts on a checkpoint); a note where two are
    customizations of one kind (two LoRAs, two Custom Diffusion folders, a SPEC twice), which may be meant as models
    to compare."""
    twice = len(set(specs)) < len(specs) or any(kinds.count(k) > 1 for k in ("lora", "custom_diffusion"))
    if not twice:
        return None
    return (
        f"{' + '.join(specs)} are stacked into one model {DEFAULT_CUSTOM!r} (applied in this order); to compare them "
        "as separate models, name each: --custom NAME=SPEC"
    )


def check_model_name(name: str) -> None:
    if not NAME.fullmatch(name) or name in RESERVED or name.startswith("alignit-"):
        raise ProbeError(
            f"bad model name {name!r}",
            "use letters, digits, '_', '.', '+' or '-' (not 'baseline', nor 'alignit…'), e.g. step500=PATH",
        )


def check_device(device: str | torch.device | None) -> torch.device:
    """The torch device for ``device`` (None: cuda if available), refused at once if this machine lacks it."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ProbeError(f"unknown device {device!r}", "use cpu, cuda, cuda:1, mps …") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ProbeError(
                f"device {device} asked for, but torch sees no CUDA GPU here",
                "drop --device (cpu is used), or install a CUDA build of torch on a GPU machine",
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ProbeError(
                f"device {device}: there are only {torch.cuda.device_count()} CUDA device(s)",
                f"use cuda:0 … cuda:{torch.cuda.device_count() - 1}",
            )
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ProbeError(f"device {device} is not available on this machine", "drop --device, or use cpu")
    return dev
