"""What one weights file's dict is, by its keys and values: Textual Inversion (diffusers' dict, A1111's
``string_to_param`` / ``emb_params``, SDXL's ``clip_l`` / ``clip_g``), Custom Diffusion, LoRA (diffusers/peft or
kohya keys) — and what it is not, named: LyCORIS (LoHa, LoKr), diffusers' old attention-processor LoRA format, a
single-file Stable Diffusion checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ProbeError

SDXL_KEYS = {"clip_l", "clip_g"}  # one-file SDXL embeddings: first / second text encoder
KNOWN = "a Textual Inversion / A1111 embedding, Custom Diffusion or LoRA file or folder, or a full pipeline directory"


def _is_lora(state: dict) -> bool:
    return any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_")) or ".lora" in k or "_lora." in k for k in state)


def _is_custom_diffusion(state: dict) -> bool:
    return any("custom_diffusion" in k for k in state)


def token_dict(state: dict) -> dict[str, torch.Tensor] | None:
    """{token: tensor} if ``state`` looks like a Textual Inversion dict, else None."""
    if not state or len(state) > 64:
        return None
    for key, value in state.items():
        if not (isinstance(key, str) and torch.is_tensor(value) and value.ndim in (1, 2) and value.numel() > 0):
            return None
        if key.endswith((".weight", ".bias", ".alpha")):
            return None
    return {k: v.detach() for k, v in state.items()}


LYCORIS = {"hada_w1_a": "LoHa", "hada_w2_a": "LoHa", "lokr_w1": "LoKr", "lokr_w2": "LoKr", "oft_blocks": "OFT"}
OLD_LORA = re.compile(r"processor\.(to_[qkv]|to_out)_lora\.(down|up)\.weight$")  # diffusers' format before peft
SINGLE_FILE = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.")


def refuse_unsupported(state: dict, path: Path) -> None:
    """Formats that hold a customization or a model this tool cannot apply, each named with what to do instead."""
    keys = [k for k in state if isinstance(k, str)]
    inner = state.get("state_dict")
    if isinstance(inner, dict):  # a .ckpt wraps its weights in "state_dict"
        keys += [k for k in inner if isinstance(k, str)]
    lycoris = next((name for k in keys for part, name in LYCORIS.items() if part in k), None)
    if lycoris:
        raise ProbeError(
            f"{path} is a LyCORIS {lycoris} file: diffusers applies LoRA (lora_down/lora_up) weights only, not "
            f"{lycoris}, so this tool cannot apply it",
            "train or export the customization as a LoRA (kohya's lora_down/lora_up keys, or save_lora_weights)",
        )
    if any(OLD_LORA.search(k) for k in keys):
        raise ProbeError(
            f"{path} is a LoRA in diffusers' old attention-processor format (…processor.to_q_lora.down.weight), "
            "which this diffusers no longer applies (it would load none of its layers)",
            "load it with the diffusers version that wrote it (unet.load_attn_procs) and save it again with "
            "save_lora_weights",
        )
    if any(k.startswith(SINGLE_FILE) for k in keys):
        xl = any(k.startswith("conditioner.embedders.") for k in keys)
        cls = "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline"
        raise ProbeError(
            f"{path} is a single-file Stable Diffusion checkpoint (the original / A1111 layout), not a diffusers "
            "folder or an artifact",
            f"convert it once: {cls}.from_single_file(FILE, config=BASELINE_DIR).save_pretrained(DIR), then pass DIR",
        )


def stem_token(path: Path) -> str:
    """The token of an embedding named by its file (A1111's rule: the file name is what prompts write)."""
    if any(c.isspace() for c in path.stem):
        raise ProbeError(
            f"the token of {path.name} is its file name, {path.stem!r}, which holds a space: a prompt cannot write "
            "it as one token",
            f"rename the file without spaces (e.g. {'_'.join(path.stem.split())}{path.suffix}) and write that "
            "name in the prompts",
        )
    return path.stem


def classify(state: dict, path: Path) -> tuple[str, dict, dict]:
    """(kind, embeddings, weights) of one file's dict (one-file SDXL embeddings: the ``clip_l`` vectors here; the
    ``clip_g`` ones are the caller's). A1111 embeddings are named by their file, as A1111 names them (the
    ``name`` they may carry inside is not what prompts write)."""
    refuse_unsupported(state, path)
    if set(state) in (SDXL_KEYS, {"clip_l"}) and all(torch.is_tensor(v) and v.ndim in (1, 2) for v in state.values()):
        return "textual_inversion", clip_tokens(state["clip_l"], path), {}
    if "string_to_param" in state:
        params = state["string_to_param"]
        if not isinstance(params, dict) or not params or not torch.is_tensor(next(iter(params.values()))):
            raise ProbeError(f"{path} has an empty or malformed string_to_param", "export the embedding again")
        return "a1111_embedding", {stem_token(path): next(iter(params.values())).detach()}, {}
    if set(state) == {"emb_params"} and torch.is_tensor(state["emb_params"]):
        return "a1111_embedding", {stem_token(path): state["emb_params"].detach()}, {}
    if _is_custom_diffusion(state):
        weights = {}
        for key, value in state.items():
            if isinstance(value, dict) and not value and key.endswith(".processor"):
                continue  # an untrained layer, written as {} in .bin files; it keeps its processor
            if not torch.is_tensor(value) or ".processor." not in key:
                raise ProbeError(
                    f"Custom Diffusion weights in {path} have an unexpected entry {key!r}",
                    "export them again with unet.save_attn_procs",
                )
            weights[key] = value
        return "custom_diffusion", {}, weights
    if _is_lora(state):
        if not all(torch.is_tensor(v) for v in state.values()):
            raise ProbeError(f"LoRA file {path} holds non-tensor entries", "export it again as safetensors")
        return "lora", {}, dict(state)
    tokens = token_dict(state)
    if tokens is not None:
        return "textual_inversion", tokens, {}
    keys = ", ".join(list(map(str, state))[:3])
    raise ProbeError(f"{path} is no customization this tool knows (keys: {keys})", f"give {KNOWN}")


def clip_tokens(vectors: torch.Tensor, path: Path) -> dict[str, torch.Tensor]:
    """The tokens of a ``clip_l`` / ``clip_g`` embedding file: ``<s0>``, ``<s1>`` … (one vector each) for the
    ``<name>_emb.safetensors`` that the advanced DreamBooth-LoRA scripts write with ``--train_text_encoder_ti``
    (prompts write them together, ``<s0><s1>``); else one token, the file stem (shared SDXL embeddings)."""
    vectors = vectors.detach()
    if not path.stem.endswith("_emb"):
        return {stem_token(path): vectors}
    rows = vectors.reshape(-1, vectors.shape[-1])
    return {f"<s{i}>": rows[i] for i in range(rows.shape[0])}
