"""K/V semantic control (the paper's manipulation figures): denoise with keys from prompt A and values from prompt B
— for all tokens, chosen tokens, or chosen layers — from the same or different models.

Keys steer where attention goes, values what is written there. The denoiser is conditioned on prompt A; at the
chosen layers each chosen token position takes B's value (position by position; positions of A's tokens).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..capture.inject import inject_kv
from ..capture.sites import record_kv, select_sites
from ..errors import ProbeError, ProbeWarning
from ..models.encoder import conditioning
from ..models.pipes import placement
from ..schema import BASELINE
from ..text.concepts import Concept, TokenizedPrompt, added_tokens, tokenize_pair
from ..text.prompt_text import quoted, token_pattern
from .engine import check_layouts
from .generation import generate_images

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from transformers import PreTrainedTokenizerBase


@dataclass
class Source:
    """A prompt through a model; ``concepts``: the model's own (a customized model's multi-vector tokens expand)."""

    pipe: object
    prompt: str
    concepts: list[Concept] = field(default_factory=list)


def unknown_to_baseline(
    prompt: str, baseline_tokenizer: PreTrainedTokenizerBase, customs: dict
) -> tuple[str, str] | None:
    """(token, model name) of a token in ``prompt`` that a customized model (``customs``: name -> pipeline) added
    and the baseline's tokenizer lacks (the baseline would read it as plain text); None if there is none."""
    known = set(baseline_tokenizer.get_added_vocab())
    for name, pipe in customs.items():
        for token in added_tokens(pipe.tokenizer):
            if token not in known and re.search(token_pattern(token), prompt):
                return token, name
    return None


def check_sources(pipes: dict, key: tuple[str, str], value: tuple[str, str]) -> None:
    """Before any work: a prompt (``key``, ``value``: (prompt, model name)) holding a token only a customized model
    (``pipes``: name -> pipeline) knows is refused through the baseline."""
    customs = {n: p for n, p in pipes.items() if n != BASELINE}
    for which, flag, (prompt, name) in (("key prompt", "--key-model", key), ("value prompt", "--value-model", value)):
        hit = unknown_to_baseline(prompt, pipes[BASELINE].tokenizer, customs) if name == BASELINE else None
        if hit:
            raise ProbeError(
                f"the {which} {quoted(prompt)} holds {hit[0]}, a token only the customized model {hit[1]!r} "
                "knows, but goes through the baseline (which would read it as plain text)",
                f"pass {flag} {hit[1]}",
            )


def _tokenized(src: Source, which: str = "prompt") -> TokenizedPrompt:
    pipe, prompt = src.pipe, src.prompt
    tp = tokenize_pair(prompt, pipe, pipe.tokenizer, src.concepts, allow_absent=True)[0]
    if tp.dropped:  # as record, alignit and attention say it
        warnings.warn(
            f"{which} {quoted(prompt)} truncated: {tp.dropped} token(s) beyond the encoder's {len(tp.ids)} dropped",
            ProbeWarning,
            stacklevel=3,
        )
    return tp


def token_positions(tp: TokenizedPrompt, words: list[str], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Positions of prompt A's tokens that spell one of ``words``: each word tokenized as the prompt is (any case,
    any script: ``café``, ``東京`` span several byte-level tokens), then found as a run of A's tokens."""
    ids = [i for i, r in zip(tp.ids, tp.role) if r != "padding"]
    pos = set()
    for word in words:
        want = tokenizer(word, add_special_tokens=False).input_ids
        for start in range(len(ids) - len(want) + 1) if want else ():
            if ids[start : start + len(want)] == want:
                end = start + len(want)
                while end < len(ids) and re.fullmatch(
                    re.escape(tp.tokens[end - 1].split("_")[0]) + r"_\d+", tp.tokens[end]
                ):
                    end += 1  # a multi-vector token's <x>_1, <x>_2 … rows with it
                pos.update(range(start, end))
    if not pos:
        shown = " ".join(prompt_words(tp, tokenizer))
        raise ProbeError(f"none of the tokens {words} is in prompt A", f"choose among: {shown}")
    return sorted(pos)


def prompt_words(tp: TokenizedPrompt, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The words of prompt A as written (byte-level tokens joined and decoded; no special or padding tokens)."""
    added = set(tokenizer.get_added_vocab())
    words, run = [], []
    for token, role in zip(tp.tokens, tp.role):
        if role not in ("context", "concept"):
            continue
        if token in added:  # a learned token is a word of its own; its <x>_1 … rows are no words
            words += [run] if run else []
            run = []
            if not re.fullmatch(r".+_\d+", token) or token.rpartition("_")[0] not in added:
                words.append([token])
            continue
        run.append(token)
        if token.endswith("</w>"):
            words.append(run)
            run = []
    return [tokenizer.convert_tokens_to_string(w).replace("</w>", " ").strip() for w in words + [run] if w]


def swap_kv(
    key_src: Source,
    value_src: Source,
    denoiser: StableDiffusionPipeline,
    tokens: list[str] | None = None,
    layers: list[str] | None = None,
    blocks: list[str] | None = None,
    with_pooled: bool = False,
) -> (
    tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor, list[int]]
    | tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor, list[int], torch.Tensor | None]
):
    """(K/V to inject per attn2 path, conditioning embeddings of A, positions swapped); with ``with_pooled`` also
    A's pooled embedding (SDXL; None otherwise), last."""
    check_layouts(key_src.pipe.unet, value_src.pipe.unet, denoiser.unet)
    sites = select_sites(denoiser.unet, layers, blocks)
    ta = _tokenized(key_src, "key prompt (A)")
    tb = _tokenized(value_src, "value prompt (B)")
    (ca, pooled_a), cb = conditioning(key_src.pipe, [ta]), conditioning(value_src.pipe, [tb])[0]
    kv_a, kv_b = record_kv(key_src.pipe.unet, ca, sites), record_kv(value_src.pipe.unet, cb, sites)
    positions = token_positions(ta, tokens, key_src.pipe.tokenizer) if tokens else list(range(len(ta.ids)))
    idx, device = torch.tensor(positions), placement(denoiser.unet)[0]
    kv = {}
    for path in sites:
        k_a, v_a = kv_a[path]
        v = v_a.clone()
        v[:, idx] = kv_b[path][1][:, idx].to(v.dtype)
        kv[path] = (k_a.to(device), v.to(device))
    if with_pooled:
        return kv, ca.to(device), positions, pooled_a
    return kv, ca.to(device), positions


def generate_swap(
    key_src: Source,
    value_src: Source,
    denoiser: StableDiffusionPipeline,
    *,
    tokens: list[str] | None = None,
    layers: list[str] | None = None,
    blocks: list[str] | None = None,
    seed: int = 0,
    steps: int = 30,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    output_type: str = "pil",
    progress: bool = True,
) -> dict[str, list]:
    """Images of prompt A, prompt B, and the swap (keys of A, values of B), same seed."""
    kw = dict(
        seed=seed,
        steps=steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        output_type=output_type,
        progress=progress,
    )
    kv, ca, _, pooled_a = swap_kv(key_src, value_src, denoiser, tokens, layers, blocks, with_pooled=True)
    images = {}
    for name, src, which in (("A", key_src, "key prompt (A)"), ("B", value_src, "value prompt (B)")):
        c, pooled = conditioning(src.pipe, [_tokenized(src, which)])
        images[name] = generate_images(src.pipe, c, pooled_prompt_embeds=pooled, **kw)
    with inject_kv(denoiser.unet, ca, kv):
        images["keys A + values B"] = generate_images(denoiser, ca, pooled_prompt_embeds=pooled_a, **kw)
    return images
