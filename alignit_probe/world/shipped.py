"""What the package ships beside the world model, for the demo and the report: two customizations of the default
concept trained by ``world train`` (Textual Inversion and Custom Diffusion, diffusers' output formats) and the
alignment table ``world eval`` measured on them (200 samples per cell).

Remade by ``analyses/world_demo_data.sh``; ``python -m alignit_probe.world.shipped EVALS_DIR OUT.json`` is its last
step (the table from one ``world eval --json`` file per method, with the commands, seed and versions)."""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

from ..errors import ProbeError

METHODS = ("textual-inversion", "custom-diffusion")
TABLE_FILE = "world-alignment.json"
TOKEN, CLASS_WORD = "<new1>", "triangle"
ROW_KEYS = ("model", "attribute", "accuracy", "ci_low", "ci_high", "n")


def data_path(name: str) -> Path:
    return Path(str(resources.files("alignit_probe.data").joinpath(name)))


def customization_dir(method: str) -> Path:
    """The shipped ``world train --method METHOD --seed 0`` output folder."""
    if method not in METHODS:
        raise ProbeError(f"method={method!r} is not shipped", "choose among: " + ", ".join(METHODS))
    return data_path(f"world-{method}")


def eval_command(method: str) -> str:
    return (
        f"alignit-probe world eval --custom world-{method} --concept '{TOKEN}' --class-word {CLASS_WORD} "
        "--alignit --samples 200 --seed 0 --json"
    )


def read_rows(path: str | Path, what: str = "alignment") -> list[dict]:
    """Rows of a ``world eval --json`` file (a list of rows), or of the shipped table (``{"rows": …}``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        fix = "pass a file written by `world eval --json`"
        raise ProbeError(f"{what} file {path} cannot be read ({e})", fix) from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) and set(ROW_KEYS) <= set(r) for r in rows):
        raise ProbeError(
            f"{what} file {path} holds no world eval rows",
            'pass the output of `world eval --json` (rows {"model","attribute","accuracy","ci_low","ci_high","n"})',
        )
    return rows


def shipped_table() -> dict:
    """The shipped table: ``{"rows": [... with "method"], "commands", "seed", "samples", "versions", ...}``."""
    path = data_path(TABLE_FILE)
    table = json.loads(path.read_text())
    read_rows(path)  # same checks as a user's file
    return table


def build_table(evals: Path) -> dict:
    """One table from ``evals/METHOD.json`` (``world eval --json`` output per shipped method)."""
    import datetime

    from .trainers import versions

    rows = []
    for method in METHODS:
        rows += [dict(method=method, **r) for r in read_rows(evals / f"{method}.json")]
    return dict(
        what="world eval of the shipped customizations: context accuracy and concept fidelity, 95% bootstrap CIs",
        commands={m: eval_command(m) for m in METHODS},
        seed=0,
        samples=200,
        date=datetime.date.today().isoformat(),
        versions=versions(),
        rows=rows,
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m alignit_probe.world.shipped EVALS_DIR OUT.json", file=sys.stderr)
        return 2
    table = build_table(Path(argv[0]))
    Path(argv[1]).write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
