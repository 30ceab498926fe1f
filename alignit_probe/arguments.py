"""What the Python front door (``Probe``, ``compare``, ``AlignITOptions``) accepts, checked the way the CLI checks
its flags: a single string where a list is expected is one item (``tokens="dog"``, ``blocks="up"``, one prompt),
and anything else of the wrong kind is a ``ProbeError`` naming the argument — never a character-by-character
iteration or an error from deep inside. Torch-free."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from typing import Any

from .errors import ProbeError


def as_prompts(prompts: str | Iterable[str], what: str = "prompts") -> list[str]:
    """One prompt or a list of prompts → a non-empty list of strings."""
    items = as_list(prompts, what, str, "a prompt or a list of prompts")
    if not items:
        raise ProbeError(f"no {what} given", f"pass {what} as a list of strings")
    return items


def as_names(value: str | Iterable[str] | None, what: str) -> list[str] | None:
    """None, one name or a list of names (tokens, layers, blocks) → None or a list of strings."""
    return None if value is None else as_list(value, what, str, "a string or a list of strings")


def as_ints(value: int | Iterable[int] | None, what: str) -> list[int] | None:
    """None, one integer or a list of them (resolutions) → None or a list of int."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return as_list(value, what, int, "an integer or a list of integers")


def as_list(value: Any, what: str, kind: type | tuple[type, ...], wanted: str) -> list:
    if isinstance(value, kind) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, Iterable):
        raise ProbeError(f"{what} takes {wanted}, not {type(value).__name__} {value!r}", f"pass {wanted}")
    items = list(value)
    bad = next((x for x in items if not isinstance(x, kind) or isinstance(x, bool)), None)
    if bad is not None:
        raise ProbeError(f"{what} holds {type(bad).__name__} {bad!r}", f"pass {wanted}")
    return items


def as_count(value: Any, what: str, least: int = 1) -> int:
    """A whole number ≥ ``least`` (``steps``, ``n_boot``, ``batch_size``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProbeError(
            f"{what} must be a whole number, not {type(value).__name__} {value!r}", f"pass {what}=N, N >= {least}"
        )
    if value < least:
        raise ProbeError(f"{what} must be at least {least}, not {value}", f"pass {what}={least} or more")
    return value


def as_dataclass(value: Any, cls: type, what: str) -> Any:
    """None, an instance of dataclass ``cls``, or a dict of its fields → None or an instance."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict) and is_dataclass(cls):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ProbeError(
                f"{cls.__name__} has no field {unknown[0]!r}", "use " + ", ".join(f.name for f in fields(cls))
            )
        return cls(**value)
    raise ProbeError(
        f"{what} takes {cls.__name__}(...) or a dict of its fields, not {type(value).__name__}",
        f"pass {what}={cls.__name__}(...)",
    )
