"""Tokenized prompt sets kept compactly: large prompt sets are tokenized (and role-aligned) up front in little
memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..schema import ROLES
from .concepts import Concept, TokenizedPrompt, tokenize_pair
from .prompt_text import class_word_notes

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from transformers import PreTrainedTokenizerBase


class TokenTable:
    """Tokenized prompts of one model kept as integer arrays (prompt, token): ~1 KB a prompt where a list of
    ``TokenizedPrompt`` takes ~15 KB, so large prompt sets tokenize up front in little memory. Indexing (global
    prompt indices, ``range`` ``span``) gives ``TokenizedPrompt`` objects back; their alignment ``label`` is empty."""

    def __init__(self, tokenizer, span: range, length: int):
        self.tokenizer, self.span = tokenizer, span
        n = len(span)
        self.text: list[str] = [""] * n
        self.ids = np.zeros((n, length), np.int32)
        self.role = np.zeros((n, length), np.int8)
        self.concept = np.zeros((n, length), np.int16)
        self.ref_index = np.zeros((n, length), np.int16)
        self.dropped = np.zeros(n, np.int32)

    def set(self, k: int, tp: TokenizedPrompt) -> None:
        i = k - self.span.start
        self.text[i], self.ids[i], self.concept[i], self.ref_index[i] = tp.text, tp.ids, tp.concept, tp.ref_index
        self.role[i] = [ROLES.index(r) for r in tp.role]
        self.dropped[i] = tp.dropped

    def __len__(self) -> int:
        return len(self.span)

    def _get(self, i: int) -> TokenizedPrompt:
        ids = self.ids[i].tolist()
        return TokenizedPrompt(
            self.text[i],
            ids,
            self.tokenizer.convert_ids_to_tokens(ids),
            [ROLES[r] for r in self.role[i]],
            self.concept[i].tolist(),
            [],
            int(self.dropped[i]),
            self.ref_index[i].tolist(),
        )

    def __getitem__(self, k):
        """``table[k]`` (global index k) or ``table[a:b]`` (global indices a ≤ k < b, clipped to the span)."""
        if isinstance(k, slice):
            lo = max(k.start if k.start is not None else self.span.start, self.span.start)
            hi = min(k.stop if k.stop is not None else self.span.stop, self.span.stop)
            return [self._get(i - self.span.start) for i in range(lo, hi)]
        return self._get(k - self.span.start)


def tokenize_table(
    prompts: list[str],
    span: range,
    custom_pipe: StableDiffusionPipeline,
    baseline_tokenizer: PreTrainedTokenizerBase,
    concepts: list[Concept],
) -> tuple[TokenTable, TokenTable, list[str]]:
    """Tokenize (and role-align) ``prompts[span]`` one by one into compact tables; returns (customized table,
    baseline table, warnings). The warnings are ``concepts.tokenize_prompts``' (global prompt numbers)."""
    length = custom_pipe.tokenizer.model_max_length
    custom = TokenTable(custom_pipe.tokenizer, span, length)
    base = TokenTable(baseline_tokenizer, span, baseline_tokenizer.model_max_length)
    warnings = []
    for k in span:
        ct, bt = tokenize_pair(prompts[k], custom_pipe, baseline_tokenizer, concepts)
        for name, tp in (("customized", ct), ("baseline", bt)):
            if tp.dropped:
                warnings.append(
                    f"prompt {k} truncated for the {name} model: {tp.dropped} token(s) beyond the "
                    f"encoder's {len(tp.ids)} dropped"
                )
        custom.set(k, ct)
        base.set(k, bt)
    return custom, base, warnings + class_word_notes([prompts[k] for k in span], concepts)
