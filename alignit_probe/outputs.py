"""Output folders: refused when they would overwrite something, and written whole or not at all."""

from __future__ import annotations

import contextlib
import re
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
    if out.exists() and any(out.iterdir()) and not ours(out):
        raise ProbeError(
            f"output folder {out} holds files alignit-probe did not write: it may be someone else's data",
            "choose another --out (--overwrite replaces only folders alignit-probe wrote)",
        )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ProbeError(f"output folder {out} is not empty", "pass --overwrite or choose another --out")
    if not out.parent.exists():
        raise ProbeError(f"folder {out.parent} does not exist", "create it first or choose another --out")
    return out


MARKER = ".alignit-probe"  # in every output folder this toolkit writes: what --overwrite may replace
KNOWN = re.compile(  # what its commands write, for folders written before the marker
    r"images|overlays|store\.zarr|grid\.png|config\.json|report\.html|rows\.json|summary\.md"
    r"|(drift|checkpoints|models)_\w+\.png|\.DS_Store"
)


def mark(folder: Path) -> None:
    (folder / MARKER).write_text("written by alignit-probe; --overwrite may replace this folder\n")


def ours(folder: Path) -> bool:
    """A folder this toolkit wrote (its marker, or nothing but what its commands write), or an empty one."""
    if (folder / MARKER).is_file():
        return True
    return all(KNOWN.fullmatch(p.name) for p in folder.iterdir())


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Write into ``<out>.partial``; move it to ``out`` only when the block succeeds (else remove it)."""
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists() and not (tmp.is_dir() and ours(tmp)):
        raise ProbeError(
            f"{tmp} exists and is not an unfinished output of alignit-probe: it may be someone else's data",
            "move or remove it yourself, or choose another --out",
        )
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mark(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
