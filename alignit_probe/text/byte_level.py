"""CLIP's byte-level BPE tokens as text: the reversible byte → printable-character table CLIP's (and GPT-2's)
tokenizer spells tokens with (a store's ``token_str`` is that spelling: ``café`` is ``cafÃ©</w>``), and tokens read
back as the text they stand for (``token_text``: ``æĿ±`` → ``東``; ``token_texts`` for a prompt's tokens, where a
character cut between tokens labels each piece). Pure Python: the read side and the figures use it without a
tokenizer."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte → the printable character that spells it in a token."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_text(token: str) -> str:
    """A token (``token_str``) as the text it stands for: ``cafÃ©</w>`` → ``café`` (see ``readable``)."""
    return readable(token)


def readable(token: str) -> str:
    """A token as the text it stands for, without the end-of-word mark ``</w>``. Bytes of a character split across
    tokens are shown as ``\\xNN``; tokens that are not byte-level spellings (added tokens such as ``<new1>``,
    special tokens) are kept as they are."""
    token = str(token).replace("</w>", "")
    table = _unicode_to_bytes()
    if not token or not all(c in table for c in token):
        return token
    return bytes(table[c] for c in token).decode("utf-8", errors="backslashreplace")


def token_texts(tokens: list[str]) -> list[str]:
    """Labels for a sequence of tokens (one prompt's ``token_str``): each as the text it stands for; a token holding
    only part of a character's bytes (a rare character BPE splits) is labeled with that character, ``…`` marking the
    side it continues on (``京…``, ``…京``), instead of raw bytes."""
    table = _unicode_to_bytes()
    labels = [readable(t) for t in tokens]
    i = 0
    while i < len(tokens):
        if "\\x" not in labels[i]:
            i += 1
            continue
        j = i  # the run of tokens whose bytes only decode together
        spelled = [str(t).replace("</w>", "") for t in tokens]
        while j < len(tokens) and all(c in table for c in spelled[j]):
            j += 1
            data = b"".join(bytes(table[c] for c in spelled[k]) for k in range(i, j))
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            labels[i:j] = _piece_labels([bytes(table[c] for c in spelled[k]) for k in range(i, j)])
            break
        i = max(j, i + 1)
    return labels


def _piece_labels(pieces: list[bytes]) -> list[str]:
    """Labels of byte pieces that decode together: each piece's whole characters, plus the characters it holds only
    part of, marked with ``…`` where they continue into the neighbour."""
    text = b"".join(pieces).decode("utf-8")
    starts, pos = [], 0  # byte offset of each character
    for ch in text:
        starts.append(pos)
        pos += len(ch.encode("utf-8"))
    ends = [s + len(ch.encode("utf-8")) for s, ch in zip(starts, text)]
    labels, offset = [], 0
    for piece in pieces:
        lo, hi = offset, offset + len(piece)
        label = ""
        for ch, a, b in zip(text, starts, ends):
            if b <= lo or a >= hi:
                continue
            label += ("…" if a < lo else "") + ch + ("…" if b > hi else "")
        labels.append(label.replace("……", "…"))
        offset = hi
    return labels
