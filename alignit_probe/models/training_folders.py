"""Folders of diffusers' training scripts that hold nothing to load, told apart so that the error names what to
pass instead: an accelerate training state (``checkpoint-N`` of ``textual_inversion.py`` or
``train_custom_diffusion.py``: optimizer, random states and weights without the names of the learned tokens), an
output folder while training runs (only ``checkpoint-N/`` and ``logs/``), and TensorBoard logs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import ProbeError

ACCELERATE_STATE = ("optimizer.bin", "scheduler.bin", "random_states_0.pkl")  # what accelerate's save_state writes
COMPONENT_FOLDERS = ("unet", "text_encoder", "text_encoder_2")  # train_dreambooth*.py's checkpoint hooks
STEPS_FILES = "learned_embeds-steps-N.safetensors (textual_inversion.py writes one every --save_steps)"


def checkpoints(folder: Path) -> list[Path]:
    """The ``checkpoint-N`` subfolders of a training output folder, by step."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return [p for _, p in sorted(found) if p.is_dir()]


def latest_steps_file(files: Sequence[Path]) -> Path | None:
    """The latest ``learned_embeds-steps-N`` file when every one of ``files`` is such a file (textual_inversion.py's
    ``--save_steps`` embeddings, in its output folder before the final ``learned_embeds.safetensors``)."""
    steps = [(int(m.group(1)), f) for f in files if (m := re.fullmatch(r"learned_embeds-steps-(\d+)\.\w+", f.name))]
    if not steps or len(steps) != len(files):
        return None
    best = max(n for n, _ in steps)
    found = [f for n, f in steps if n == best]
    return next((f for f in found if f.suffix == ".safetensors"), found[0])


def is_accelerate_state(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ACCELERATE_STATE)


def is_log_folder(folder: Path) -> bool:
    """TensorBoard (or other event) logs and no weights: the ``logs/`` of a training output folder."""
    files = [f for f in folder.rglob("*") if f.is_file()]
    return any(f.name.startswith("events.out.tfevents") for f in files) and not any(
        f.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt") for f in files
    )


def loadable(folder: Path, names: Sequence[str]) -> bool:
    """Whether a checkpoint folder holds what a SPEC loads: component folders, or one of the artifact ``names``."""
    return any((folder / c / "config.json").is_file() for c in COMPONENT_FOLDERS) or any(
        (folder / n).is_file() for n in names
    )


def nothing_to_load(folder: Path, looked_for: str, names: Sequence[str], n_other: int) -> ProbeError:
    """The error for a folder without customization weights (``looked_for``: the file names tried; ``names``: every
    artifact file name a checkpoint may hold; ``n_other``: other weights files found in it)."""
    if is_accelerate_state(folder):
        if (folder / "model_1.safetensors").is_file():  # the text encoder and the UNet's layers: Custom Diffusion
            return ProbeError(
                f"{folder} is a training state saved by accelerate (checkpoint-N of train_custom_diffusion.py): its "
                "weights carry no names for the tokens they learned",
                "pass the output folder once training has finished (the script writes its weights only then)",
            )
        return ProbeError(
            f"{folder} is a training state saved by accelerate (checkpoint-N of textual_inversion.py): its "
            "weights carry no names for the tokens they learned",
            f"pass a {STEPS_FILES}, or the output folder once training has finished",
        )
    steps = checkpoints(folder)
    if steps:
        latest = steps[-1]
        shown = ", ".join(p.name for p in steps[-3:])
        if loadable(latest, names):
            fix = f"pass a checkpoint: --custom {latest} (the latest)"
        elif (latest / "model_1.safetensors").is_file():  # train_custom_diffusion.py's accelerate states
            fix = "wait until training has finished (train_custom_diffusion.py writes its weights only then)"
        else:  # textual_inversion.py's
            fix = f"wait until training has finished (its checkpoints carry no token names), or pass a {STEPS_FILES}"
        return ProbeError(f"{folder} holds training checkpoints ({shown}) but no final weights yet", fix)
    if is_log_folder(folder):
        above = next((q for q in folder.parents if q.name == "logs"), folder).parent
        return ProbeError(f"{folder} holds training logs, no weights", f"pass the training output folder ({above})")
    fix = "pass the weights file itself" if n_other else "pass the folder the training script wrote its weights to"
    return ProbeError(
        f"folder {folder} has no customization weights (looked for {looked_for}; found {n_other} other weights files)",
        fix,
    )
