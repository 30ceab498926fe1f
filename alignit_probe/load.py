"""Load a baseline and its customized counterpart: ``load_pair(baseline, customs) -> ModelPair``.

A custom SPEC is either a full pipeline directory (has ``model_index.json``: DreamBooth or any fine-tune; loaded
whole, and it must come first) or an artifact file/folder (see ``artifacts``) applied to a fresh load of the
baseline. Several SPECs apply in order onto the same custom pipeline, e.g. a TI embedding and then a LoRA.

"Did it load?": each artifact is checked to change something. Before and after applying it, the probe prompt
``PROBE`` is run through every stage of the text path (token embeddings, every hidden state, the encoder output,
K/V at every attn2 site via ``sites.record_kv``) and through one UNet call. Tokens an artifact adds cannot be
compared that way (without them the prompt tokenizes differently), so their embedding rows are checked instead:
a row bit-identical to an existing vocabulary row makes the token a mere alias. When nothing differs the artifact
gets the warning ``artifact PATH changed nothing: every stage is bit-identical to the model without it``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import sites
from .artifacts import (
    build_custom_diffusion, check_embeddings, check_lora, is_pipeline_dir, parse_artifact, set_processors,
)
from .errors import ProbeError

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

PROBE = "a photo"
METHODS = {"textual_inversion": "textual_inversion", "a1111_embedding": "textual_inversion",
           "custom_diffusion": "custom_diffusion", "lora": "lora"}


@dataclass
class Artifact:
    """One applied customization file/folder.

    ``tokens`` are the placeholder/modifier tokens as written in prompts (a multi-vector token ``<tok>`` is also
    added as ``<tok>_1`` ... which ``pipe.maybe_convert_prompt`` inserts); empty for LoRA.
    """

    path: str
    kind: str
    sha256: str
    tokens: list[str]
    warnings: list[str] = field(default_factory=list)


@dataclass
class ModelPair:
    baseline: StableDiffusionPipeline
    custom: StableDiffusionPipeline
    baseline_id: str
    custom_ids: list[str]
    method: str
    artifacts: list[Artifact] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_pipeline(model: str, device="cpu", dtype=torch.float32) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` from a diffusers directory or hub id (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    model = str(model)
    p = Path(model)
    if p.exists() and not is_pipeline_dir(p):
        raise ProbeError(f"{model} is not a diffusers pipeline directory (no model_index.json)",
                         "give a directory written by save_pretrained, or a hub id")
    if not p.exists() and (model.startswith((".", "/", "~")) or model.count("/") != 1):
        raise ProbeError(f"model {model} does not exist", "check the path, or give a hub id like org/name")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            model, dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
    except Exception as e:
        text = str(e).strip().splitlines()
        raise ProbeError(f"cannot load pipeline {model} ({text[0][:160] if text else type(e).__name__})",
                         "give a local diffusers pipeline directory, or a hub id that is cached or reachable") from e
    return pipe.to(device)


# --------------------------------------------------------------------------------------------------- probe stages
def _stages(pipe, prompt: str = PROBE) -> dict[str, torch.Tensor]:
    """Every stage of the text path for ``prompt``, plus one UNet output, keyed by stage name."""
    te, unet = pipe.text_encoder, pipe.unet
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(te.device)
    out = {}
    with torch.no_grad():
        res = te(ids, output_hidden_states=True)
        out["token_embeddings"] = te.get_input_embeddings()(ids)
        for i, h in enumerate(res.hidden_states):
            out[f"hidden_states.{i}"] = h
        c = res[0]
        out["encoder_output"] = c
        for path, (k, v) in sites.record_kv(unet, c.to(unet.dtype)).items():
            out[f"{path}.key"], out[f"{path}.value"] = k, v
        size = max(8, 2 ** (len(unet.config.block_out_channels) - 1))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, unet.config.in_channels, size, size, generator=gen).to(unet.device, unet.dtype)
        out["unet_output"] = unet(x, 500, encoder_hidden_states=c.to(unet.dtype)).sample
    return out


def _differs(before: dict, after: dict, names) -> bool:
    return any(n not in before or n not in after or not torch.equal(before[n], after[n]) for n in names)


def _nothing_warning(path: str) -> str:
    return f"artifact {path} changed nothing: every stage is bit-identical to the model without it"


def _aliases_only(weight: torch.Tensor, new_ids: list[int]) -> bool:
    """Whether every new token's row is bit-identical to some other (pre-existing) vocabulary row."""
    for i in new_ids:
        same = (weight == weight[i]).all(dim=1)
        same[new_ids] = False
        if not same.any():
            return False
    return True


def _verify(art: Artifact, before: dict, after: dict, weight: torch.Tensor, new_ids: list[int]) -> None:
    text_path = [n for n in after if n != "unet_output"]
    text_changed = _differs(before, after, text_path)
    unet_changed = _differs(before, after, ["unet_output"])
    tokens_matter = bool(new_ids) and not _aliases_only(weight, new_ids)
    if not (text_changed or unet_changed or tokens_matter):
        art.warnings.append(_nothing_warning(art.path))
    elif not (text_changed or tokens_matter):
        art.warnings.append(f"artifact {art.path} leaves the text path unchanged (token embeddings, encoder, attn2 "
                            "K/V are bit-identical): only the UNet outside attn2 K/V differs")


# ------------------------------------------------------------------------------------------------------- applying
def apply_artifact(pipe, path: str) -> Artifact:
    """Validate one artifact, apply it to ``pipe`` in place, and check that it changed something."""
    return _apply(pipe, parse_artifact(path))


def _apply(pipe, parsed) -> Artifact:
    art = Artifact(parsed.path, parsed.kind, parsed.sha256, parsed.tokens, list(parsed.warnings))
    if parsed.embeddings:
        check_embeddings(parsed, pipe.tokenizer, pipe.text_encoder)
    if parsed.kind == "lora":
        check_lora(pipe, parsed)
    cd = build_custom_diffusion(pipe.unet, parsed) if parsed.kind == "custom_diffusion" else {}
    added_before = set(pipe.tokenizer.added_tokens_encoder)
    before = _stages(pipe)

    if parsed.embeddings:
        _load_tokens(pipe, parsed)
    if parsed.kind == "custom_diffusion":
        set_processors(pipe.unet, cd)
    elif parsed.kind == "lora":
        _load_lora(pipe, parsed)

    new_ids = [i for t, i in pipe.tokenizer.added_tokens_encoder.items() if t not in added_before]
    _verify(art, before, _stages(pipe), pipe.text_encoder.get_input_embeddings().weight.detach(), new_ids)
    _check_tokenizable(pipe, art)
    return art


def _load_tokens(pipe, parsed) -> None:
    """Delegate to diffusers' ``load_textual_inversion`` (multi-vector tokens become <tok>, <tok>_1, ...).

    transformers' ``resize_token_embeddings`` samples the new rows (then overwritten) from the global RNG: keep
    the caller's RNG state untouched.
    """
    for token, tensor in parsed.embeddings.items():
        with torch.random.fork_rng(devices=[]):
            try:
                pipe.load_textual_inversion({token: tensor}, token=token)
            except ValueError as e:
                raise ProbeError(f"diffusers refused token {token!r} from {parsed.path} ({e})",
                                 "rename the token or drop the duplicate SPEC") from e


def _load_lora(pipe, parsed) -> None:
    """Delegate to diffusers' ``load_lora_weights``; keep every LoRA loaded so far active (diffusers activates
    only the newest adapter)."""
    names = list(dict.fromkeys(n for v in pipe.get_list_adapters().values() for n in v))
    name = f"artifact_{len(names)}"
    try:
        pipe.load_lora_weights(dict(parsed.weights), adapter_name=name)
    except Exception as e:
        raise ProbeError(f"diffusers could not load the LoRA in {parsed.path} ({str(e).strip()[:160]})",
                         "use a LoRA trained for this baseline, saved with save_lora_weights or by kohya") from e
    if names:
        pipe.set_adapters(names + [name], adapter_weights=[1.0] * (len(names) + 1))


def _check_tokenizable(pipe, art: Artifact) -> None:
    if not art.tokens:
        return
    prompt = pipe.maybe_convert_prompt(f"{PROBE} of {' '.join(art.tokens)}", pipe.tokenizer)
    ids = set(pipe.tokenizer(prompt).input_ids)
    for token in art.tokens:
        if pipe.tokenizer.convert_tokens_to_ids(token) not in ids:
            art.warnings.append(f"artifact {art.path}: token {token!r} is never produced by the tokenizer, "
                                "so prompts cannot use it")


# ----------------------------------------------------------------------------------------------------------- pairs
def _resolve(spec: str) -> str:
    """'pipeline' or 'artifact', checked before any model is loaded."""
    p = Path(spec)
    if is_pipeline_dir(p):
        return "pipeline"
    if p.exists():
        return "artifact"
    if not spec.startswith((".", "/", "~")) and spec.count("/") == 1 and not p.suffix:
        return "pipeline"  # a hub id
    raise ProbeError(f"customization {spec} does not exist", "check the path")


def load_pair(
    baseline: str, customs: list[str], device="cpu", dtype=torch.float32, progress=True
) -> ModelPair:
    """Baseline and customized pipelines, every custom SPEC applied in order, each artifact verified."""
    from tqdm.auto import tqdm

    customs = [customs] if isinstance(customs, (str, Path)) else [str(c) for c in customs]
    if not customs:
        raise ProbeError("no customized model given", "pass a pipeline directory or an artifact file as SPEC")
    kinds = [_resolve(c) for c in customs]
    if "pipeline" in kinds[1:]:
        bad = customs[kinds.index("pipeline", 1)]
        raise ProbeError(f"full pipeline {bad} must be the first SPEC (it replaces the whole model)",
                         "put it first, followed by the artifacts to apply onto it")
    specs = customs[1:] if kinds[0] == "pipeline" else customs
    parsed = [parse_artifact(spec) for spec in specs]  # bad files fail before any model is loaded
    base = load_pipeline(baseline, device, dtype)
    custom = load_pipeline(customs[0] if kinds[0] == "pipeline" else baseline, device, dtype)
    if sites.layout(base.unet) != sites.layout(custom.unet):
        raise ProbeError(
            f"{customs[0]} and baseline {baseline} have different cross-attention layouts (attn2 paths/heads/widths)",
            "compare a customized model with the baseline it was trained from",
        )
    methods = ["dreambooth"] if kinds[0] == "pipeline" else []
    warnings = []
    if kinds[0] == "pipeline" and not _differs(_stages(base), after := _stages(custom), after.keys()):
        warnings.append(f"custom model {customs[0]} changed nothing: every stage is bit-identical to the baseline")
    artifacts = []
    for one in tqdm(parsed, desc="applying customizations", disable=not progress or len(parsed) < 2):
        art = _apply(custom, one)
        artifacts.append(art)
        warnings.extend(art.warnings)
        if METHODS[art.kind] not in methods:
            methods.append(METHODS[art.kind])
    custom.to(device)
    return ModelPair(base, custom, str(baseline), customs, "+".join(methods), artifacts, warnings)
