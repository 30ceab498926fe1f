"""Prompts as text, before any tokenizer: where each concept's token stands (a word of its own), the class word
after it, the baseline's prompt (the concept's token left out, its class word standing in), and what is said
about them (a prompt without its concept, a class word that never follows). Torch-free and model-free, so the CLI
checks prompts before any model loads."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ProbeError


@dataclass(frozen=True)
class Concept:
    """A concept's token in prompts (``<new1>``, ``sks``) and its class word (``cat``), the baseline's partner."""

    token: str
    class_word: str | None = None

    def __post_init__(self):
        if not isinstance(self.token, str) or not (self.class_word is None or isinstance(self.class_word, str)):
            raise ProbeError(
                f"Concept takes strings: got token {self.token!r}, class word {self.class_word!r}",
                'write Concept("<new1>", "cat") (the class word may be None)',
            )
        if not self.token.strip():
            raise ProbeError("a Concept's token is empty", "pass the token prompts use for it (e.g. <new1>, sks)")
        if self.class_word and self.token.strip().lower() == self.class_word.lower():
            raise ProbeError(
                f"concept {self.token!r} is its own class word: the baseline's prompts would equal the customized "
                "model's, so nothing would tell the concept apart",
                "pass the token or instance word the model learned as the concept (e.g. sks, <new1>) and the "
                "class it stands for as its class word (e.g. dog, cat)",
            )


def token_pattern(token: str) -> str:
    """``token`` as a regex. A plain word (``sks``) matches in any case (CLIP lowercases prompts) and only where no
    letter touches it (CLIP's pre-tokenizer splits ``sks_dog`` and ``sks2`` there, not ``asksy``); a token with
    other characters (``<new1>``, added to the tokenizer) matches exactly, anywhere."""
    pattern = re.escape(token)
    if re.match(r"[^\W\d_]", token):
        pattern = r"(?<![^\W\d_])" + pattern
    if re.search(r"[^\W\d_]$", token):
        pattern += r"(?![^\W\d_])"
    return f"(?i:{pattern})" if re.fullmatch(r"[^\W_]+", token) else pattern


def occurs(prompt: str, concept: Concept) -> bool:
    return bool(concept.token) and re.search(token_pattern(concept.token), prompt) is not None


def split_concepts(prompt: str, concepts: list[Concept]) -> list[tuple[str, int | None]]:
    """The prompt as alternating (text chunk, None) and (modifier, concept index) pieces."""
    order = sorted((i for i in range(len(concepts)) if concepts[i].token), key=lambda i: -len(concepts[i].token))
    if not order:
        return [(prompt, None)]
    pattern = re.compile("|".join(f"(?P<c{i}>{token_pattern(concepts[i].token)})" for i in order))
    pieces, last = [], 0
    for m in pattern.finditer(prompt):
        pieces.append((prompt[last : m.start()], None))
        pieces.append((m.group(0), int(m.lastgroup[1:])))
        last = m.end()
    pieces.append((prompt[last:], None))
    return pieces


def take_class_word(chunk: str, word: str | None) -> tuple[bool, str]:
    if word:
        m = re.match(r"\s*" + re.escape(word) + r"(?=\W|$)", chunk, flags=re.IGNORECASE)
        if m:
            return True, chunk[m.end() :]
    return False, chunk


def baseline_text(prompt: str, concepts: list[Concept]) -> str:
    """The prompt without modifier tokens (the class word stands in where none follows)."""
    out = []
    pieces = split_concepts(prompt, concepts)
    for i, (text, c) in enumerate(pieces):
        if c is None:
            out.append(text)
            continue
        follows, _ = take_class_word(pieces[i + 1][0], concepts[c].class_word)
        if not follows and concepts[c].class_word:
            out.append(" " + concepts[c].class_word + " ")
        else:
            out.append(" ")
    return re.sub(r"\s+", " ", "".join(out)).strip()


def check_concepts_present(prompts: Sequence[str], concepts: list[Concept]) -> None:
    """Every prompt holds a concept's token as a word of its own (checked on the text: before any model loads)."""
    for prompt in prompts:
        if not any(occurs(prompt, c) for c in concepts):
            names = ", ".join(c.token for c in concepts)
            raise ProbeError(
                f"concept token {names} is absent from prompt {quoted(prompt)}",
                "put the token in the prompt as a word of its own",
            )


def quoted(prompt: str, most: int = 80) -> str:
    """``prompt`` quoted for a one-line message, its middle elided when long."""
    if len(prompt) <= most:
        return repr(prompt)
    return repr(prompt[: most // 2 - 2] + " … " + prompt[-(most // 2 - 2) :])


# words that follow a concept without naming its class ("a <new1> on the beach", "<new1> wearing a hat")
FUNCTION_WORDS = frozenset(
    "a an the and or but of in on at to from with without by for into onto over under near next behind beside "
    "between above below inside outside through across against along around as is are was were be being been "
    "has have had that this these those which who while where when its his her their our your my very".split()
)


def no_class_word_note(concept: Concept) -> str:
    """What a concept without a class word loses (said by the CLI before models load, kept in the store)."""
    return (
        f"concept {concept.token!r} has no class word: its tokens have no baseline partner, so its concept rows in "
        "compare have no values (n 0); give the class it stands for (--class-word WORD, or Concept(token, "
        "class_word) in Python), e.g. dog"
    )


def class_word_notes(prompts: Sequence[str], concepts: list[Concept]) -> list[str]:
    """A note for each class word that follows its concept's token in none of the prompts while one same word
    follows it in all of them, a word that may name a class (not a function word, not a verb form ending in -ing or
    -ed): the prompts may name the class with it ("<new1> cat" with --class-word dog makes the baseline's prompt
    "dog cat"). Prompts like "a <new1> on the beach" rightly get the class word inserted."""
    notes = []
    for c in concepts:
        if not c.class_word:
            notes.append(no_class_word_note(c))
            continue
        after, joined = set(), None
        for prompt in prompts:
            pieces = split_concepts(prompt, [c])
            for i, (_text, which) in enumerate(pieces):
                if which is not None:
                    if take_class_word(pieces[i + 1][0], c.class_word)[0]:
                        after.add(None)
                    else:
                        after.add((re.findall(r"\w+", pieces[i + 1][0]) or [""])[0].lower())
                        if after >= {c.class_word.lower()} and joined is None:
                            joined = prompt
        word = next(iter(after)) if len(after) == 1 else None
        if joined is not None:  # "sks-dog", "<new1>, cat": the class word after punctuation is no partner
            notes.append(
                f"class word {c.class_word!r} follows {c.token} only after punctuation in {quoted(joined)}, so it "
                f"is no partner of the concept there and stands in again: the baseline's prompt reads "
                f"{quoted(baseline_text(joined, [c]))} (write '{c.token} {c.class_word}' for a partner)"
            )
        elif word and word.isalpha() and word not in FUNCTION_WORDS and not word.endswith(("ing", "ed")):
            notes.append(
                f"class word {c.class_word!r} follows {c.token} in none of the prompts, while {word!r} follows it in "
                f"all: the baseline's prompts read '… {c.class_word} {word} …'; if {word!r} is the class, pass "
                f"--class-word {word}"
            )
    return notes
