"""Concepts in prompts, and token alignment between the customized prompt and the baseline prompt.

A concept is its placeholder/modifier token plus an optional class word (``cat``). The token is anything the
customized model's tokenizer knows: an added token (``<new1>``; a multi-vector Textual Inversion token expands to
several ids, as diffusers' ``maybe_convert_prompt`` does) or plain text it encodes to one or more ids (a DreamBooth /
LoRA instance word like ``sks``, or a word BPE splits into pieces). In the customized prompt the concept span is the
modifier's ids plus the class word right after them; the baseline prompt is the prompt with the modifier removed, or
replaced by the class word where none follows. A token that starts (ends) with a word character matches only on a
word boundary there (``sks`` not inside ``asksy``); ``<new1>``-style tokens match anywhere, as the tokenizer splits
them out anywhere.

Prompts are tokenized chunk by chunk (CLIP's BPE never merges across whitespace, and added tokens are split out
first), so every token knows its role — ``special`` (start/end), ``padding``, ``concept``, ``context`` — and its
partner in the other prompt by construction. The chunked result is checked against the tokenizer on the whole prompt.

SDXL has a second tokenizer: the same BPE, padding with ``!`` (id 0, as SD2.x's). A prompt's positions and roles are
the same for both encoders; ``ids_for(tokenizer_2, tp)`` numbers its tokens as the second tokenizer does (padding
positions get its pad id, whatever their string), and the customized prompt is checked against that tokenizer too:
a prompt the two split differently (the second splits its padding token ``!`` out of words) has no common positions
and is refused.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ProbeError, ProbeWarning
from ..schema import ROLES  # noqa: F401  (re-exported: roles are a property of tokens)
from .prompt_text import (
    Concept,
    baseline_text,
    check_concepts_present,
    class_word_notes,
    quoted,
    split_concepts,
    take_class_word,
)

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from transformers import PreTrainedTokenizerBase


@dataclass
class TokenizedPrompt:
    """One prompt as one model sees it: 77 positions with ids, strings, roles and alignment labels."""

    text: str
    ids: list[int]
    tokens: list[str]
    role: list[str]
    concept: list[int]  # concept index, -1 outside concept spans
    label: list[tuple]  # alignment label: equal labels in two prompts are partner tokens
    dropped: int = 0  # tokens cut by truncation
    ref_index: list[int] = field(default_factory=list)  # partner position in the reference prompt, -1 if none

    @property
    def spans(self) -> dict[int, list[int]]:
        """Positions of each concept occurrence, keyed by occurrence number."""
        out: dict[int, list[int]] = {}
        for pos, lab in enumerate(self.label):
            if lab[0] == "concept":
                out.setdefault(lab[1], []).append(pos)
        return out


def align_positions(dst: TokenizedPrompt, src: TokenizedPrompt) -> list[int]:
    """For every position of ``dst``, its partner position in ``src`` (-1: none).

    Context, start/end and padding tokens pair by label (the k-th context token with the k-th, …). Concept spans pair
    occurrence by occurrence, right-aligned (class word with class word); extra ``dst`` tokens pair with the first
    token of the ``src`` span, and with nothing where that span is empty."""
    where = {lab: j for j, lab in enumerate(src.label) if lab[0] != "concept"}
    out = [where.get(lab, -1) for lab in dst.label]
    src_spans = src.spans
    for occ, d in dst.spans.items():
        s = src_spans.get(occ, [])
        for k, pos in enumerate(reversed(d)):
            out[pos] = s[len(s) - 1 - k] if k < len(s) else (s[0] if s else -1)
    return out


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids if text.strip() else []


_ADDED_LOOKING = re.compile(r"<[^<>\s]+>")  # <new1>, <cat-toy>: placeholder tokens an artifact adds


def added_tokens(tok: PreTrainedTokenizerBase, expansions: bool = False) -> list[str]:
    """The tokens an artifact added to ``tok`` (not special ones; without ``expansions``, not the ``<x>_1`` …
    rows of multi-vector tokens)."""
    special = set(tok.all_special_tokens)
    added = [t for t in tok.get_added_vocab() if t not in special]
    if expansions:
        return added
    expansion = re.compile("|".join(re.escape(t) + r"_\d+" for t in added) or "(?!)")  # <new1>_1, <new1>_2, …
    return [t for t in added if not expansion.fullmatch(t)]


def check_concepts_use_added(
    pipe: StableDiffusionPipeline,
    baseline_tokenizer: PreTrainedTokenizerBase,
    concepts: list[Concept],
    strict: bool = True,
) -> None:
    """A customized model that added tokens (Textual Inversion, Custom Diffusion, pivotal tuning) is measured
    through them: concepts that use none of them compare words the baseline knows, never the learned vectors. An
    error where the added tokens are all the model learned (``strict``: Textual Inversion alone), else a warning
    (an instance word may carry what DreamBooth or a LoRA learned)."""
    tok = pipe.tokenizer
    new = [
        t
        for t in added_tokens(tok, expansions=True)
        if baseline_tokenizer.convert_tokens_to_ids(t) in (None, baseline_tokenizer.unk_token_id)
    ]
    if not new or not concepts:
        return
    ids = set(tok.convert_tokens_to_ids(new))
    names = [t for t in added_tokens(tok) if t in new]
    pivotal = sorted((t for t in names if re.fullmatch(r"<s\d+>", t)), key=lambda t: int(t[2:-1]))
    if any(ids & set(modifier_ids(pipe, c)) for c in concepts):
        for c in concepts:  # pivotal tuning's <s0><s1>… are learned together and prompted together
            used = [t for t in pivotal if t in c.token]
            if 0 < len(used) < len(pivotal):
                warnings.warn(
                    f"concept {c.token!r} uses {len(used)} of the tokens {''.join(pivotal)} that pivotal tuning "
                    f'learned together (the others\' vectors are never read): pass --concept "{"".join(pivotal)}"',
                    ProbeWarning,
                    stacklevel=2,
                )
        return
    suggestion = "".join(pivotal) if pivotal and len(pivotal) == len(names) else names[0]
    problem = (
        f"concept {', '.join(repr(c.token) for c in concepts)} uses none of the tokens the customized model added "
        f"({', '.join(names)}), so their learned vectors are never read"
    )
    if strict:
        raise ProbeError(problem, f"pass --concept {suggestion} and write it in the prompts")
    warnings.warn(f"{problem} (measure them with --concept {suggestion})", ProbeWarning, stacklevel=2)


def _unknown(tok, token: str) -> ProbeError:
    """The error for a token the tokenizer cannot encode, naming the tokens it added (not ``<x>_1`` expansions)."""
    added = added_tokens(tok)
    if added:
        fix = f"use one of its added tokens: {', '.join(added)}"
    elif _ADDED_LOOKING.fullmatch(token.strip()):  # <new1>: a token some artifact must add
        fix = (
            f"it added no tokens: load the file that defines {token.strip()} (a Custom Diffusion output folder with "
            f"its {token.strip()}.safetensors, a Textual Inversion file), or use the instance word a DreamBooth or "
            "LoRA model was trained on (e.g. sks)"
        )
    else:
        fix = (
            "it added no tokens: use the instance word it was trained on (DreamBooth, LoRA: e.g. sks), or load the "
            "artifact that defines the token"
        )
    return ProbeError(f"concept token {token!r} is unknown to the customized model's tokenizer", fix)


def _other_added(text: str, tok) -> ProbeError:
    """The error for text between concepts that holds tokens only the customized model knows, naming them."""
    held = [t for t in added_tokens(tok) if t in text]
    if not held:
        return ProbeError(
            f"text {text.strip()!r} tokenizes differently in the customized and baseline tokenizers",
            "remove other placeholder tokens from the prompt or name them as concepts too",
        )
    pivotal = sorted((t for t in added_tokens(tok) if re.fullmatch(r"<s\d+>", t)), key=lambda t: int(t[2:-1]))
    fix = (
        f'pass --concept "{"".join(pivotal)}" (pivotal tuning\'s tokens are one concept)'
        if set(held) <= set(pivotal)
        else f"name {' '.join(held)} as a concept too (--concept), or remove it from the prompt"
    )
    return ProbeError(f"prompt text {text.strip()!r} holds {', '.join(held)}, a token the customized model added", fix)


def modifier_ids(pipe: StableDiffusionPipeline, concept: Concept) -> list[int]:
    """The ids ``pipe``'s tokenizer produces for the concept's token in a prompt (after ``maybe_convert_prompt``):
    one or several for an added token (multi-vector embeddings), one or several for plain text (``sks`` →
    ``sks</w>``; a word BPE splits into pieces)."""
    tok = pipe.tokenizer
    token = concept.token
    if not token.strip():
        raise _unknown(tok, token)
    if _ADDED_LOOKING.fullmatch(token.strip()):
        tid = tok.convert_tokens_to_ids(token.strip())  # (not get_vocab(): it builds a 49k-entry dict per call)
        if tid is None or (tid == tok.unk_token_id and token.strip() != tok.unk_token):
            raise _unknown(tok, token)
    text = token
    if hasattr(pipe, "maybe_convert_prompt"):
        text = pipe.maybe_convert_prompt(text, tok)
    ids = _encode(tok, text)
    if not ids or (tok.unk_token_id in ids and tok.unk_token not in token):
        raise _unknown(tok, token)
    return ids


def _assemble(pieces, tokenizer, max_length: int) -> TokenizedPrompt:
    """pieces: (ids, role, concept, labels) runs → 77 positions with start/end/padding."""
    ids, role, concept, label = [], [], [], []
    for run_ids, run_role, run_concept, run_labels in pieces:
        ids += run_ids
        role += [run_role] * len(run_ids)
        concept += [run_concept] * len(run_ids)
        label += run_labels
    room = max_length - 2
    dropped = max(0, len(ids) - room)
    ids, role, concept, label = ids[:room], role[:room], concept[:room], label[:room]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    n_pad = room - len(ids)
    ids = [bos] + ids + [eos] + [pad] * n_pad
    role = ["special"] + role + ["special"] + ["padding"] * n_pad
    concept = [-1] + concept + [-1] + [-1] * n_pad
    label = [("bos",)] + label + [("eos",)] + [("pad", j) for j in range(n_pad)]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return TokenizedPrompt("", ids, tokens, role, concept, label, dropped)


def tokenize_pair(
    prompt: str,
    custom_pipe: StableDiffusionPipeline,
    baseline_tokenizer: PreTrainedTokenizerBase,
    concepts: list[Concept],
    allow_absent: bool = False,
) -> tuple[TokenizedPrompt, TokenizedPrompt]:
    """(customized TokenizedPrompt with ref_index into the baseline one, baseline TokenizedPrompt)."""
    mods = [modifier_ids(custom_pipe, c) for c in concepts]
    if not allow_absent:
        check_concepts_present([prompt], concepts)
    ctok = custom_pipe.tokenizer
    max_length = ctok.model_max_length
    pieces = split_concepts(prompt, concepts)
    custom, base = [], []
    n_ctx, occurrence, skip_class = 0, 0, False
    for i, (text, c) in enumerate(pieces):
        if c is None:
            if skip_class:
                _, text = take_class_word(text, concepts[pieces[i - 1][1]].class_word)
            cids, bids = _encode(ctok, text), _encode(baseline_tokenizer, text)
            if cids != bids:
                raise _other_added(text, ctok)
            labels = [("ctx", n_ctx + j) for j in range(len(cids))]
            n_ctx += len(cids)
            custom.append((cids, "context", -1, labels))
            base.append((bids, "context", -1, labels))
            continue
        word = concepts[c].class_word
        follows, _ = take_class_word(pieces[i + 1][0], word)
        skip_class = follows
        b_ids = _encode(baseline_tokenizer, word) if word else []
        c_ids = mods[c] + (_encode(ctok, word) if follows else [])
        b_labels = [("concept", occurrence, j) for j in range(len(b_ids))]
        c_labels = [("concept", occurrence, j) for j in range(len(c_ids))]
        custom.append((c_ids, "concept", c, c_labels))
        base.append((b_ids, "concept", c, b_labels))
        occurrence += 1
    ct = _assemble(custom, ctok, max_length)
    bt = _assemble(base, baseline_tokenizer, max_length)
    at, whole = 0, []  # each occurrence: are all its modifier ids inside the window (class word aside)?
    for ids, role, c, _labels in custom:
        if role == "concept":
            whole.append(at + len(mods[c]) <= max_length - 2)
        at += len(ids)
    if whole and not any(whole) and not allow_absent:
        names = ", ".join(concepts[c].token for c in sorted({run[2] for run in custom if run[1] == "concept"}))
        raise ProbeError(
            f"concept {names} of prompt {quoted(prompt)} is cut off: the prompt is {len(ct.ids) + ct.dropped} "
            f"tokens, the text encoder reads {len(ct.ids)}",
            "shorten the prompt or move the concept nearer its start",
        )
    ct.text, bt.text = prompt, baseline_text(prompt, concepts)
    _check_against_tokenizer(ct, ctok, custom_pipe, ct.text)
    _check_against_tokenizer(bt, baseline_tokenizer, None, bt.text)
    second = getattr(custom_pipe, "tokenizer_2", None)
    if second is not None:  # SDXL: the same positions and roles for the second encoder
        _check_second_tokenizer(ct, second, custom_pipe)
    ct.ref_index = align_positions(ct, bt)
    bt.ref_index = list(range(len(bt.ids)))
    return ct, bt


def ids_for(tokenizer: PreTrainedTokenizerBase, tp: TokenizedPrompt) -> list[int]:
    """``tp``'s token ids as ``tokenizer`` numbers them (SDXL's second tokenizer: the same BPE tokens, its own pad
    id at every ``padding`` position, and where the first reads its pad token ``!`` as a word of its own, as the
    second tokenizer reads it). A token it lacks (an embedding loaded into one encoder only) is refused."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = tokenizer.convert_tokens_to_ids(tp.tokens)
    split_out = f"{tokenizer.pad_token}</w>" if tokenizer.pad_token in tokenizer.get_added_vocab() else None
    out = []
    for token, i, role in zip(tp.tokens, ids, tp.role):
        if role == "padding" or token == split_out:  # SDXL's "!" stands alone: the second tokenizer's pad token
            out.append(pad)
        elif i is None or (i == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise ProbeError(
                f"token {token!r} of prompt {tp.text!r} is unknown to the second tokenizer",
                "load the embedding into both text encoders (SDXL Textual Inversion: clip_l and clip_g vectors)",
            )
        else:
            out.append(i)
    return out


def _check_second_tokenizer(tp: TokenizedPrompt, tokenizer, pipe) -> None:
    """SDXL's encoders see one sequence of positions only where both tokenizers split the prompt alike; the second
    one splits its padding token ``!`` out of any word (``cat!`` → ``cat``, ``!``), the first does not."""
    text = pipe.maybe_convert_prompt(tp.text, tokenizer) if hasattr(pipe, "maybe_convert_prompt") else tp.text
    whole = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    if whole != ids_for(tokenizer, tp):
        raise ProbeError(
            f"SDXL's two tokenizers split prompt {tp.text!r} differently, so its tokens have no common positions",
            f"remove {tokenizer.pad_token!r} (the second tokenizer's padding token, split out of words) from it",
        )


def _check_against_tokenizer(tp: TokenizedPrompt, tokenizer, pipe, text: str) -> None:
    if pipe is not None and hasattr(pipe, "maybe_convert_prompt"):
        text = pipe.maybe_convert_prompt(text, tokenizer)
    whole = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    if whole != tp.ids:
        raise ProbeError(
            f"cannot align tokens of prompt {text!r}: chunked tokenization differs from the tokenizer's",
            "separate the concept token from neighbouring text with spaces",
        )


def tokenize_prompts(
    prompts: Sequence[str],
    custom_pipe: StableDiffusionPipeline,
    baseline_tokenizer: PreTrainedTokenizerBase,
    concepts: list[Concept],
    allow_absent: bool = False,
    first: int = 0,
) -> tuple[list[TokenizedPrompt], list[TokenizedPrompt], list[str]]:
    """Tokenize every prompt; returns (customized list, baseline list, warnings; prompts numbered from ``first``)."""
    customs, bases, warnings = [], [], []
    for k, p in enumerate(prompts, first):
        ct, bt = tokenize_pair(p, custom_pipe, baseline_tokenizer, concepts, allow_absent)
        for name, tp in (("customized", ct), ("baseline", bt)):
            if tp.dropped:
                warnings.append(
                    f"prompt {k} truncated for the {name} model: {tp.dropped} token(s) beyond the encoder's "
                    f"{len(tp.ids)} dropped"
                )
        customs.append(ct)
        bases.append(bt)
    return customs, bases, warnings + class_word_notes(prompts, concepts)
