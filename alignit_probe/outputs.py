"""Output folders: refused when they would overwrite something, and written whole or not at all."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import ProbeError
from .store.layout import NOT_A_STORE


def out_dir(path: str, overwrite: bool) -> Path:
    out = Path(path).resolve()  # (".": a name to stage next to)
    if out.suffix.lower() in NOT_A_STORE and not out.is_dir():
        raise ProbeError(
            f"output {path} is named like a {out.suffix} file, but this command writes a folder",
            f"name it {Path(path).with_suffix('').name}",
        )
    if out.exists() and not out.is_dir():
        raise ProbeError(f"output {out} is a file", "choose a folder for --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ProbeError(f"output folder {out} is not empty", "pass --overwrite or choose another --out")
    if not out.parent.exists():
        raise ProbeError(f"folder {out.parent} does not exist", "create it first or choose another --out")
    return out


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Write into ``<out>.partial``; move it to ``out`` only when the block succeeds (else remove it)."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
