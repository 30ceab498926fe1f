"""Applying one parsed artifact to a pipeline in place, through diffusers' own loaders, and checking that it loaded.

Tokens go through ``load_textual_inversion(..., text_encoder=…, tokenizer=…)``, once per text encoder: SDXL
Textual Inversion carries a vector set per encoder (``learned_embeds.safetensors`` + ``learned_embeds_2.safetensors``,
or one file with ``clip_l`` / ``clip_g``), and both must be present with the same number of vectors, so that the two
tokenizers expand the token alike. LoRA goes through ``load_lora_weights`` (UNet and any text encoder). "Did it
load?" (``verify``) compares every stage before and after, and the new token rows of every encoder.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..errors import ProbeError
from .artifacts import RETRAINED, Parsed, first_line, parse_artifact
from .install import build_custom_diffusion, check_embeddings, check_lora, set_processors
from .pipes import TEXT_2, is_xl, text_encoders
from .verify import PROBE, stages, verify

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


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


def token_sets(pipe: StableDiffusionPipeline, parsed: Parsed) -> list[tuple[object, object, dict]]:
    """(tokenizer, text encoder, {token: vectors}) per text encoder that the artifact's tokens go into."""
    encoders = text_encoders(pipe)
    if not is_xl(pipe):
        if parsed.embeddings_2:
            raise ProbeError(
                f"{parsed.path} holds vectors for SDXL's second text encoder (clip_g / learned_embeds_2) but the "
                f"model is a {type(pipe).__name__} with one text encoder",
                "use it with the SDXL baseline it was trained for",
            )
        return [(encoders[0][1], encoders[0][2], parsed.embeddings)]
    if set(parsed.embeddings) != set(parsed.embeddings_2):
        widths = [te.get_input_embeddings().weight.shape[-1] for _, _, te in encoders]
        given = {x.shape[-1] for x in (parsed.embeddings or parsed.embeddings_2).values()}
        if not given <= set(widths):
            raise ProbeError(
                f"{parsed.path} holds {'/'.join(map(str, sorted(given)))}-wide token vectors, but this SDXL model's "
                f"text encoders are {widths[0]} and {widths[1]} wide",
                "use it with the model it was trained for (SD 1.x encoders are 768 wide, SD 2.x 1024)",
            )
        if parsed.kind == "custom_diffusion":  # diffusers trains Custom Diffusion for one-encoder models only
            raise ProbeError(
                f"{parsed.path} is a Custom Diffusion artifact of a one-text-encoder model (SD 1.x/2.x), but the "
                "baseline is SDXL",
                "use it with the baseline it was trained from",
            )
        if parsed.embeddings:
            raise ProbeError(
                f"{parsed.path} has {'/'.join(map(str, sorted(given)))}-wide token vectors for one text encoder: an "
                "SD 1.x embedding, or the first half of an SDXL one, but this SDXL model has two encoders",
                "use an SD 1.x embedding with its SD 1.x baseline; for SDXL pass the folder with "
                "learned_embeds.safetensors and learned_embeds_2.safetensors (textual_inversion_sdxl.py writes both), "
                "or one file with clip_l and clip_g",
            )
        raise ProbeError(
            f"{parsed.path} has token vectors for SDXL's second text encoder only (the model has two)",
            "pass the folder with learned_embeds.safetensors and learned_embeds_2.safetensors "
            "(textual_inversion_sdxl.py writes both), or one file with clip_l and clip_g",
        )
    widths = [te.get_input_embeddings().weight.shape[-1] for _, _, te in encoders]
    for token, t in parsed.embeddings.items():
        if (t.shape[-1], parsed.embeddings_2[token].shape[-1]) == (widths[1], widths[0]) != tuple(widths):
            first, second = ("clip_l", "clip_g") if len(parsed.files) == 1 else (f.name for f in parsed.files[:2])
            raise ProbeError(
                f"token {token!r} in {parsed.path}: the first encoder's vectors ({first}) are {widths[1]}-wide and "
                f"the second's ({second}) {widths[0]}-wide, the other way round from this SDXL model's encoders "
                f"({widths[0]}, {widths[1]}): the two look swapped",
                f"swap them ({first} ↔ {second}) and save the file again",
            )
        n1, n2 = (1 if x.ndim == 1 else x.shape[0] for x in (t, parsed.embeddings_2[token]))
        if n1 != n2:
            raise ProbeError(
                f"token {token!r} in {parsed.path} has {n1} vector(s) for the first text encoder, {n2} for the second",
                RETRAINED,
            )
    return [(tok, te, parsed.embeddings if group != TEXT_2 else parsed.embeddings_2) for group, tok, te in encoders]


def apply_artifact(pipe: StableDiffusionPipeline, path: str) -> Artifact:
    """Validate one artifact, apply it to ``pipe`` in place, and check that it changed something."""
    return apply_parsed(pipe, parse_artifact(path))


def apply_parsed(pipe: StableDiffusionPipeline, parsed: Parsed) -> Artifact:
    """Apply one ``artifacts.Parsed`` to ``pipe``: everything is checked first, so a refused artifact leaves the
    pipeline untouched."""
    art = Artifact(parsed.path, parsed.kind, parsed.sha256, parsed.tokens, list(parsed.warnings))
    sets = token_sets(pipe, parsed) if parsed.tokens else []
    for tok, te, embeddings in sets:
        check_embeddings(parsed, tok, te, embeddings)
    if parsed.kind == "lora":
        check_lora(pipe, parsed)
    cd = build_custom_diffusion(pipe.unet, parsed) if parsed.kind == "custom_diffusion" else {}
    added_before = [set(tok.added_tokens_encoder) for _, tok, _ in text_encoders(pipe)]
    before = stages(pipe)

    for tok, te, embeddings in sets:
        load_tokens(pipe, parsed, tok, te, embeddings)
    if parsed.kind == "custom_diffusion":
        set_processors(pipe.unet, cd)
    elif parsed.kind == "lora":
        load_lora(pipe, parsed)

    new_rows = [
        (te.get_input_embeddings().weight.detach(), [i for t, i in tok.added_tokens_encoder.items() if t not in old])
        for (_, tok, te), old in zip(text_encoders(pipe), added_before)
    ]
    art.warnings += verify(art.path, before, stages(pipe), new_rows)
    check_tokenizable(pipe, art)
    return art


def load_tokens(
    pipe: StableDiffusionPipeline,
    parsed: Parsed,
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: PreTrainedModel,
    embeddings: dict,
) -> None:
    """Delegate to diffusers' ``load_textual_inversion`` for one text encoder (multi-vector tokens become <tok>,
    <tok>_1, ...).

    transformers' ``resize_token_embeddings`` samples the new rows (then overwritten) from the global RNG: keep
    the caller's RNG state untouched.
    """
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # not its notice on how the new rows, overwritten next, are sampled
    try:
        for token, tensor in embeddings.items():
            with torch.random.fork_rng(devices=[]):
                try:
                    pipe.load_textual_inversion(
                        {token: tensor}, token=token, text_encoder=text_encoder, tokenizer=tokenizer
                    )
                except ValueError as e:
                    raise ProbeError(
                        f"diffusers refused token {token!r} from {parsed.path} ({e})",
                        "rename the token or drop the duplicate SPEC",
                    ) from e
    finally:
        transformers_logging.set_verbosity(level)


def load_lora(pipe: StableDiffusionPipeline, parsed: Parsed) -> None:
    """Delegate to diffusers' ``load_lora_weights`` (text-encoder layers through transformers' ``load_adapter``);
    keep every LoRA loaded so far active (diffusers activates only the newest adapter)."""
    names = list(dict.fromkeys(n for v in pipe.get_list_adapters().values() for n in v))
    name = f"artifact_{len(names)}"
    source, where = lora_source(parsed)
    try:
        with warnings.catch_warnings():
            # peft on every LoRA after the first: "Already found a `peft_config` attribute" (stacking is the point)
            warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)
            pipe.load_lora_weights(source, adapter_name=name, **where)
    except Exception as e:
        raise ProbeError(
            f"diffusers could not load the LoRA in {parsed.path} ({first_line(e)})",
            "use a LoRA trained for this baseline, saved with save_lora_weights or by kohya",
        ) from e
    if names:
        pipe.set_adapters(names + [name], adapter_weights=[1.0] * (len(names) + 1))


def lora_source(parsed: Parsed) -> tuple[object, dict]:
    """What ``load_lora_weights`` gets: the weights already read, or the file itself where it carries diffusers'
    LoRA adapter metadata (``lora_alpha`` and ranks per component, written by ``save_lora_weights(...,
    unet_lora_adapter_metadata=...)`` when alpha ≠ rank), which diffusers reads only from a file: from a dict it
    would take alpha = rank and scale the LoRA wrongly."""
    main = parsed.files[0]
    if main.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(main), framework="pt") as f:
            if LORA_METADATA in (f.metadata() or {}):
                return str(main.parent), {"weight_name": main.name}
    return dict(parsed.weights), {}


LORA_METADATA = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY


def check_tokenizable(pipe: StableDiffusionPipeline, art: Artifact) -> None:
    """A warning for every token some tokenizer of ``pipe`` never produces (prompts could not use it)."""
    if not art.tokens:
        return
    for _, tok, _ in text_encoders(pipe):
        prompt = pipe.maybe_convert_prompt(f"{PROBE} of {' '.join(art.tokens)}", tok)
        ids = set(tok(prompt).input_ids)
        for token in art.tokens:
            warning = (
                f"artifact {art.path}: token {token!r} is never produced by the tokenizer, so prompts cannot use it"
            )
            if tok.convert_tokens_to_ids(token) not in ids and warning not in art.warnings:
                art.warnings.append(warning)
