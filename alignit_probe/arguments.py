"""What the Python front door (``Probe``, ``compare``, ``AlignITOptions``) accepts, checked the way the CLI checks
its flags: a single string where a list is expected is one item (``tokens="dog"``, ``blocks="up"``, one prompt),
and anything else of the wrong kind is a ``ProbeError`` naming the argument — never a character-by-character
iteration or an error from deep inside. Torch-free."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import fields, is_dataclass
from typing import Any

from .errors import ProbeError
from .text.prompt_text import Concept


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


def as_generation(seed: Any, steps: Any, guidance_scale: Any, height: Any, width: Any) -> dict:
    """Generation keywords checked: a whole seed, steps ≥ 1, a number for guidance, sizes None or positive multiples
    of 8 (the VAE's factor)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ProbeError(f"seed must be a whole number, not {type(seed).__name__} {seed!r}", "pass seed=0 (any int)")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise ProbeError(f"guidance_scale must be a number, not {guidance_scale!r}", "pass e.g. guidance_scale=7.5")
    for what, size in (("height", height), ("width", width)):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 8):
            raise ProbeError(
                f"{what} must be a positive multiple of 8 (or None), not {size!r}", f"pass e.g. {what}=512"
            )
    return dict(
        seed=seed, steps=as_count(steps, "steps"), guidance_scale=float(guidance_scale), height=height, width=width
    )


def as_shard(shard: Any) -> tuple[int, int] | None:
    """None, (I, N) or "I/N" → None or (I, N) with 0 ≤ I < N."""
    if shard is None:
        return None
    if isinstance(shard, str) and shard.count("/") == 1 and all(p.strip().isdigit() for p in shard.split("/")):
        shard = tuple(int(p) for p in shard.split("/"))
    if (
        isinstance(shard, (tuple, list))
        and len(shard) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
        and 0 <= shard[0] < shard[1]
    ):
        return (shard[0], shard[1])
    raise ProbeError(f"shard must be (I, N) or 'I/N' with 0 <= I < N, not {shard!r}", "pass e.g. shard=(0, 4)")


def as_concepts(concepts: Concept | str | Iterable[Concept | str] | dict | None) -> list[Concept]:
    """``Concept``, a token, a list of Concepts, tokens or ``(token, class_word)`` pairs, or ``{token: class_word}``
    → list of ``Concept``."""
    if concepts is None:
        return []
    if isinstance(concepts, dict):
        concepts = list(concepts.items())
    if isinstance(concepts, (Concept, str)):
        concepts = [concepts]
    if not isinstance(concepts, Iterable):
        raise ProbeError(f"concepts= takes Concepts, not {type(concepts).__name__}", WANT_CONCEPTS)
    out = []
    for c in concepts:
        if isinstance(c, tuple) and len(c) == 2:
            c = Concept(*c)
        if isinstance(c, str):
            c = Concept(c)
        if not isinstance(c, Concept):
            raise ProbeError(f"concepts= holds {type(c).__name__} {c!r}", WANT_CONCEPTS)
        out.append(c)
    return out


WANT_CONCEPTS = 'pass [Concept("<new1>", "cat")], a token, (token, class_word) pairs or {token: class_word}'


def check_models(baseline: Any, custom: Any) -> None:
    """``Probe``'s baseline and customized models of a kind it takes (paths, hub ids, SPECs or pipelines)."""
    if not (isinstance(baseline, (str, os.PathLike)) or hasattr(baseline, "unet")):
        raise ProbeError(
            f"baseline= takes a pipeline directory, a hub id or a pipeline, not {type(baseline).__name__}",
            'pass e.g. "runwayml/stable-diffusion-v1-5" or a local diffusers folder',
        )
    if isinstance(custom, dict):
        bad = next(
            (
                k
                for k, v in custom.items()
                if not isinstance(v, (str, os.PathLike, list, tuple)) and not hasattr(v, "unet")
            ),
            None,
        )
        if bad is not None:
            raise ProbeError(
                f"custom[{bad!r}] is {type(custom[bad]).__name__}, not a SPEC, a list of SPECs or a pipeline",
                'pass e.g. custom={"mine": "path/to/artifact"}',
            )
    if not (custom is None or isinstance(custom, (str, os.PathLike, list, tuple, dict)) or hasattr(custom, "unet")):
        raise ProbeError(
            f"custom= takes a SPEC, a list of [NAME=]SPEC, a dict {{NAME: SPEC or pipeline}} or a pipeline, "
            f"not {type(custom).__name__}",
            'pass e.g. custom="path/to/custom_diffusion_output"',
        )


FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")
IN_OPTIONS = ("alpha", "end-tokens", "pooled", "template")  # flags that are AlignITOptions fields in Python
PYTHON_NAMES = {
    "concept": "concepts=",
    "class-word": "Concept(token, class_word)",
    "overwrite": "overwrite=True",
    "keys-only": "AlignITOptions(values=False)",
    "values-only": "AlignITOptions(keys=False)",
}


def in_python(fn: Callable) -> Callable:
    """A ``Probe`` method whose errors name the keyword beside each CLI flag their fix names (``--clip-skip 2`` →
    ``--clip-skip 2 (clip_skip=)``), since the messages are shared with the CLI."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProbeError as e:
            if not e.fix or "--" not in e.fix or "in Python" in e.fix or getattr(args[0], "speaks_cli", False):
                raise
            names = ", ".join(dict.fromkeys(python_name(flag) for flag in FLAG.findall(e.fix)))
            raise ProbeError(e.problem, f"{e.fix} (in Python: {names})") from e

    return wrapper


def python_name(flag: str) -> str:
    """The keyword (or ``AlignITOptions`` field) a CLI flag stands for in Python."""
    if flag in PYTHON_NAMES:
        return PYTHON_NAMES[flag]
    return f"AlignITOptions({flag.replace('-', '_')}=)" if flag in IN_OPTIONS else f"{flag.replace('-', '_')}="
