"""Resuming a partial store that an interrupted run of the same job left behind.

A run that fails (a crash, Ctrl-C, a job killed at its time limit) leaves ``<out>.partial``; its root attribute
``written`` (``{model: prompts}``) is advanced only after a batch's arrays are on disk, so everything up to it is
whole and anything beyond it may be torn. Rerunning the same job keeps the former and drops the latter."""

from __future__ import annotations

from typing import TextIO

import zarr

from ..errors import ProbeError
from .arrays import PartialArrays
from .layout import FORMAT, decode_attrs, remove_path

SAME_JOB = ("format", "fingerprint", "shard")  # root attributes that must match for a partial store to be resumed


def resume(
    arrays: PartialArrays, attrs: dict, n_prompts: int | None, log: TextIO, replace: bool = True
) -> dict[str, int] | None:
    """Take up the partial store at ``arrays.root`` if this job (``attrs``) left it: groups of models with nothing
    written are removed, every model's arrays are trimmed back to its ``written`` count (then regrown to
    ``n_prompts`` when given, so appends never rewrite metadata) and its groups marked as started in ``arrays``.

    Returns ``written`` (``{model: prompts}``); None when there is nothing to resume: no ``fingerprint`` in
    ``attrs``, no partial store, or one of another job (a note on ``log``; the caller starts afresh)."""
    tmp = arrays.root
    if attrs.get("fingerprint") is None or not tmp.is_dir():
        return None
    try:
        root = zarr.open_group(str(tmp), mode="r+")
        old = decode_attrs(dict(root.attrs))
        written = {str(k): int(v) for k, v in old["written"].items()}
    except Exception:  # noqa: BLE001 - unreadable leftovers are replaced
        old, written = {}, {}
    if [old.get(k) for k in SAME_JOB] != [({**attrs, "format": FORMAT}).get(k) for k in SAME_JOB]:
        if any(tmp.iterdir()) and old.get("format") != FORMAT:  # (--overwrite neither)
            raise ProbeError(
                f"{tmp} exists and is not an unfinished alignit-probe store: it may be someone else's data",
                "move or remove it yourself, or choose another --out",
            )
        if old.get("format") == FORMAT and written and not replace:  # hours of another job's work: not silently
            what = differences(old, attrs) or "other models, prompts or options"
            raise ProbeError(
                f"{tmp} holds an unfinished recording of a different job ({what})",
                "rerun that job's command to finish it, or pass --overwrite to delete it and start this one",
            )
        print(f"note: {tmp} was left by a different recording job: starting afresh", file=log)
        return None
    for name, node in list(root.members()):
        if written.get(name, 0) == 0 or not isinstance(node, zarr.Group):
            remove_path(tmp / name)
            written.pop(name, None)
            continue
        arrays.started.add(name)
        for sub, member in node.members(max_depth=None):
            if isinstance(member, zarr.Group):
                arrays.started.add(f"{name}/{sub}")
    for model, n in written.items():  # drop what the interrupted run wrote beyond its count, then regrow
        arrays.resize(model, n)
        if n_prompts:
            arrays.resize(model, n_prompts)
    done = ", ".join(f"{m} {n}" for m, n in written.items()) or "nothing"
    print(f"resuming {tmp}: {done} prompt(s) already written", file=log)
    return written


def differences(old: dict, new: dict) -> str:
    """What differs between two jobs' root attributes, as far as they say (options by name: ``batch_size 1 → 8``)."""
    out = []
    same_job = {"written", "complete", "format", "fingerprint", "command", "warnings", "recorded_at"}
    for key in sorted(set(old) & set(new) - same_job):
        a, b = old[key], new[key]
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k} {a.get(k)} → {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"other {key}")
    return ", ".join(out)
