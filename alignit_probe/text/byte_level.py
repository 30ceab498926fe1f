"""CLIP's byte-level BPE tokens as text: the reversible byte → printable-character table CLIP's (and GPT-2's)
tokenizer spells tokens with, and tokens read back as the text they stand for (``æĿ±`` → ``東``). Pure Python: the
read side and the figures use it without a tokenizer."""

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


def readable(token: str) -> str:
    """A token as the text it stands for, without the end-of-word mark ``</w>``. Bytes of a character split across
    tokens are shown as ``\\xNN``; tokens that are not byte-level spellings (added tokens such as ``<new1>``,
    special tokens) are kept as they are."""
    token = str(token).replace("</w>", "")
    table = _unicode_to_bytes()
    if not token or not all(c in table for c in token):
        return token
    return bytes(table[c] for c in token).decode("utf-8", errors="backslashreplace")
