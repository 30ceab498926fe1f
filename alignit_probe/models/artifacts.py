"""Customization files, read safely and recognized by content: what kind, which tokens, which weights.

Formats are the ones diffusers' official training scripts write (plus the common community ones):

* Textual Inversion (``textual_inversion.py``): ``learned_embeds.safetensors|.bin`` = {placeholder: (n, dim) or (dim,)};
  a folder holding such a file is accepted too. SDXL (``textual_inversion_sdxl.py``): ``learned_embeds.safetensors``
  for the first text encoder plus ``learned_embeds_2.safetensors`` for the second, side by side (the folder, or the
  first file: its sibling is read with it); or one file {"clip_l": (n, 768), "clip_g": (n, 1280)} (the common SDXL
  embedding form), whose token is the file stem; the ``<name>_emb.safetensors`` of the advanced DreamBooth-LoRA
  scripts' pivotal tuning (SD1.5: ``clip_l`` only) holds tokens ``<s0>``, ``<s1>`` …, and its output folder is read
  as that LoRA plus those embeddings (``artifact_paths``).
* A1111 embedding ``.pt``: {"string_to_param": {"*": (n, dim)}, "name": ...}; or ``.safetensors``: {"emb_params": ...}.
  The token is the file stem, as A1111 names embeddings (its prompts write the file name; an inner "name" that
  differs is said in a warning), used verbatim, never wrapped in ``<...>``.
* Custom Diffusion (``train_custom_diffusion.py``): a folder with ``pytorch_custom_diffusion_weights.safetensors|.bin``
  (keys ``<layer>.processor.to_k_custom_diffusion.weight`` ...) and one ``<token>.safetensors|.bin`` per modifier
  token ({token: (dim,)}); the weights file alone is accepted too (no tokens then; in a folder, with a warning). The
  script has written token files as ``<token>.bin`` holding safetensors bytes, so files are recognized by content,
  never by extension. A folder of token files without the weights file is refused, naming the missing file.
* LoRA: ``pytorch_lora_weights.safetensors`` (diffusers/peft keys, ``save_lora_weights``) or kohya keys
  (``lora_unet_..._attn2_to_k.lora_down.weight``, ``.alpha``) that diffusers can convert.

Pickle-based files (.bin/.pt/.ckpt) are opened only with ``torch.load(..., weights_only=True)``: anything beyond
tensors and plain containers is refused with a ``ProbeError``, never executed.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ProbeError
from .recognize import KNOWN, SDXL_KEYS, classify, clip_tokens, token_dict
from .training_folders import is_accelerate_state, latest_steps_file, nothing_to_load

KINDS = ("textual_inversion", "a1111_embedding", "custom_diffusion", "lora")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
TI_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")
TI2_NAMES = ("learned_embeds_2.safetensors", "learned_embeds_2.bin")  # SDXL's second text encoder
CD_NAMES = ("pytorch_custom_diffusion_weights.safetensors", "pytorch_custom_diffusion_weights.bin")
LORA_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
RETRAINED = "use weights trained for this baseline"


@dataclass
class Parsed:
    """One customization as read from disk, before it touches a model."""

    path: str
    kind: str
    files: list[Path]
    sha256: str
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # token -> (n, dim) or (dim,)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # Custom Diffusion / LoRA tensors
    warnings: list[str] = field(default_factory=list)
    embeddings_2: dict[str, torch.Tensor] = field(default_factory=dict)  # SDXL: the second text encoder's vectors

    @property
    def tokens(self) -> list[str]:
        return list(dict.fromkeys([*self.embeddings, *self.embeddings_2]))


def is_pipeline_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "model_index.json").is_file()


def sha256_files(files: list[Path]) -> str:
    """sha256 of the files' bytes concatenated in sorted order."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n <= size - 8


def read_weights(path: str | Path) -> dict:
    """A weights file's dict, read without executing anything. Format by content: safetensors or torch pickle."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"weights file {path} does not exist", "check the path")
    size = path.stat().st_size
    if size == 0:
        raise ProbeError(f"{path} is empty (0 bytes)", "download or export the file again")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if _is_safetensors(head, size):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # SafetensorError: bad header, truncated data
            raise ProbeError(
                f"{path} is a corrupt or truncated safetensors file ({first_line(e)})",
                "download or export the file again",
            ) from e
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive / legacy pickle
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights only" not in str(e).lower():
                raise ProbeError(
                    f"{path} is a corrupt torch file ({first_line(e)})", "download or export the file again"
                ) from e
            raise ProbeError(
                f"{path} holds pickled objects beyond tensors; refused to unpickle it (it could run code)",
                "get a .safetensors version of this file, or re-save only its tensors in a trusted environment",
            ) from e
        except Exception as e:  # truncated zip, bad pickle stream
            raise ProbeError(
                f"{path} is a corrupt or truncated torch file ({first_line(e)})", "download or export the file again"
            ) from e
        if not isinstance(state, dict):
            raise ProbeError(f"{path} holds a {type(state).__name__}, not a dict of weights", f"give {KNOWN}")
        return state
    raise ProbeError(f"{path} is not a weights file (neither safetensors nor a torch file)", f"give {KNOWN}")


def first_line(e: Exception, limit: int = 160) -> str:
    """An exception's first line (its first sentence where it has several), cut at a word (with "…") where longer
    than ``limit``."""
    text = str(e).strip().splitlines()
    line = re.split(r"(?<=[a-z)])\. (?=[A-Z])", text[0])[0] if text else type(e).__name__
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:") + " …"


def check_finite(state: dict, path: str | Path, prefix: str = "") -> None:
    for key, value in state.items():
        if isinstance(value, dict):
            check_finite(value, path, f"{prefix}{key}.")
        elif torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise ProbeError(
                f"weights in {path} contain NaN or inf (tensor {prefix}{key})",
                "the file is damaged or training diverged: use an earlier checkpoint or retrain",
            )


NO_TOKEN_FILE = "no modifier-token file <token>.safetensors (or .bin) found"  # unless a stacked artifact adds one


def artifact_paths(spec: str | Path) -> list[str]:
    """The artifact files of one SPEC: the SPEC itself, or, for the folder train_dreambooth_lora_sdxl_advanced.py
    (and its SD1.5 sibling) writes with pivotal tuning, its LoRA and its ``<name>_emb.safetensors`` embeddings,
    which are trained together and used together."""
    p = Path(spec)
    if not p.is_dir() or is_pipeline_dir(p) or (lora := _pick(p, LORA_NAMES)) is None:
        return [str(spec)]
    embeddings = sorted(p.glob("*_emb.safetensors"))
    if len(embeddings) > 1:
        names = ", ".join(f.name for f in embeddings)
        raise ProbeError(
            f"folder {spec} holds a LoRA and several pivotal-tuning embeddings ({names})",
            f"pass {lora.name} and one embedding file as SPECs of one model (NAME={lora} NAME=FILE)",
        )
    return [str(lora), str(embeddings[0])] if embeddings else [str(spec)]


def _pick(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def parse_artifact(path: str | Path) -> Parsed:
    """Locate, read (safely), recognize and sanity-check one customization file or folder."""
    p, step_note = Path(path), None
    if not p.exists():
        raise ProbeError(f"customization {path} does not exist", "check the path")
    if is_pipeline_dir(p):
        raise ProbeError(f"{path} is a full pipeline, not an artifact", "pass it as a custom model of load_pair")
    if p.is_dir():
        found = {
            kind: _pick(p, names)
            for kind, names in (("custom_diffusion", CD_NAMES), ("textual_inversion", TI_NAMES), ("lora", LORA_NAMES))
        }
        found = {k: v for k, v in found.items() if v is not None}
        if len(found) > 1:
            names = ", ".join(f.name for f in found.values())
            raise ProbeError(f"folder {path} holds several customizations ({names})", "pass each file as its own SPEC")
        if found:
            main = next(iter(found.values()))
        else:
            tokens = [f for f in sorted(p.iterdir()) if _is_modifier_token_file(f)]
            if tokens:
                names = ", ".join(f.name for f in tokens)
                raise ProbeError(
                    f"folder {path} holds Custom Diffusion modifier-token file(s) {names} but its Custom Diffusion "
                    f"weights file {CD_NAMES[0]} (or .bin) is missing",
                    f"copy {CD_NAMES[0]} that train_custom_diffusion.py wrote into the folder, or pass a token file "
                    "itself to load it as a Textual Inversion embedding",
                )
            candidates = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
            steps = latest_steps_file(candidates)
            if steps is not None:  # textual_inversion.py still training (or stopped): its latest saved embedding
                candidates = [steps]
                step_note = (
                    f"{path} has no final {TI_NAMES[0]}: its latest intermediate embedding {steps.name} is used "
                    "(training may still be running)"
                )
            if len(candidates) != 1 or is_accelerate_state(p):
                looked_for = f"{TI_NAMES[0]}, {CD_NAMES[0]}, {LORA_NAMES[0]}"
                raise nothing_to_load(p, looked_for, TI_NAMES + CD_NAMES + LORA_NAMES, len(candidates))
            main = candidates[0]
    else:
        main = p
    if main.name in TI2_NAMES:
        raise ProbeError(
            f"{main} holds the vectors of SDXL's second text encoder only: learned_embeds.safetensors (or .bin), the "
            "first encoder's, is missing beside it",
            "put the learned_embeds.safetensors that textual_inversion_sdxl.py wrote next to it, and pass the folder",
        )
    state = read_weights(main)
    check_finite(state, main)
    kind, embeddings, weights = classify(state, main)
    parsed = Parsed(str(path), kind, [main], "", embeddings, weights)
    if step_note:
        parsed.warnings.append(step_note)
    parsed.warnings += beside_notes(parsed, state, main, folder=p.is_dir())
    if set(state) == SDXL_KEYS:
        parsed.embeddings_2 = clip_tokens(state["clip_g"], main)
    elif kind == "textual_inversion" and main.name in TI_NAMES:
        _add_second_encoder(parsed, main.parent)
    if kind == "custom_diffusion" and p.is_dir():
        _add_modifier_tokens(parsed, p, main)
        if not parsed.embeddings:
            parsed.warnings.append(
                f"{NO_TOKEN_FILE} next to {main}: only the Custom Diffusion K/V projections are applied, no new "
                "token is added"
            )
    parsed.sha256 = sha256_files(parsed.files)
    return parsed


def beside_notes(parsed: Parsed, state: dict, main: Path, folder: bool) -> list[str]:
    """What a file given alone leaves out of what sits beside it, and an A1111 embedding's inner name."""
    notes = []
    name = state.get("name") if parsed.kind == "a1111_embedding" else None
    if isinstance(name, str) and name.strip() and name != main.stem:
        notes.append(
            f"{main.name} is used as token {main.stem!r}, its file name, as A1111 names embeddings (the file calls "
            f"itself {name!r})"
        )
    weights = _pick(main.parent, CD_NAMES)
    if not folder and weights is not None and parsed.kind == "textual_inversion" and _is_modifier_token_file(main):
        notes.append(
            f"{main.name} is loaded alone, as a Textual Inversion embedding: the Custom Diffusion weights beside it "
            f"({weights.name}) are not applied (pass the folder {main.parent} to load both)"
        )
    if not folder and parsed.kind == "custom_diffusion":
        tokens = [f.name for f in sorted(main.parent.iterdir()) if f != main and _is_modifier_token_file(f)]
        if tokens:
            notes.append(
                f"{main.name} is loaded alone: its modifier-token file(s) {', '.join(tokens)} beside it are not "
                f"(pass the folder {main.parent} to load both)"
            )
    return notes


def _add_second_encoder(parsed: Parsed, folder: Path) -> None:
    """SDXL Textual Inversion: ``learned_embeds_2.*`` next to ``learned_embeds.*`` holds the second encoder's
    vectors of the same tokens."""
    second = _pick(folder, TI2_NAMES)
    if second is None:
        return
    state = read_weights(second)
    check_finite(state, second)
    tokens = token_dict(state)
    if tokens is None or set(tokens) != set(parsed.embeddings):
        raise ProbeError(
            f"{second} does not hold the tokens of {parsed.files[0].name} ({', '.join(parsed.embeddings)})",
            "export both files from the same textual_inversion_sdxl.py run",
        )
    parsed.embeddings_2 = tokens
    parsed.files.append(second)


_TOKEN_STEM = re.compile(r"<[^<>]+>")


def _is_modifier_token_file(f: Path) -> bool:
    """A ``<token>.safetensors|.bin`` file as train_custom_diffusion.py writes it: one {token: (dim,)} entry whose
    key is the file's stem."""
    if not (f.is_file() and f.suffix in (".safetensors", ".bin") and _TOKEN_STEM.fullmatch(f.stem)):
        return False
    tokens = token_dict(read_weights(f))
    return tokens is not None and list(tokens) == [f.stem] and tokens[f.stem].ndim == 1


def _add_modifier_tokens(parsed: Parsed, folder: Path, main: Path) -> None:
    """The ``<token>.safetensors|.bin`` files next to Custom Diffusion weights (safetensors preferred)."""
    files = sorted(
        (f for f in folder.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES and f != main),
        key=lambda f: (f.stem, f.suffix != ".safetensors"),
    )
    for f in files:
        state = read_weights(f)
        check_finite(state, f)
        tokens = token_dict(state)
        if tokens is None or len(tokens) != 1:
            parsed.warnings.append(f"ignored {f}: not a modifier-token embedding")
            continue
        token = next(iter(tokens))
        if token in parsed.embeddings:
            continue  # the same token saved twice (.safetensors and .bin): the first, safetensors, wins
        parsed.embeddings[token] = tokens[token]
        parsed.files.append(f)
