"""The package's layers (``alignit_probe.LAYERS``, declared in its docstring): no module imports from a layer above
its own — imports inside functions and under ``TYPE_CHECKING`` count — so there is no cycle between subpackages."""

from __future__ import annotations

import ast
from pathlib import Path

import alignit_probe
from alignit_probe import LAYERS

PACKAGE = Path(alignit_probe.__file__).parent
EXPORTS = alignit_probe._EXPORTS  # {front-door name: the module it comes from}


def imported_modules(relative: Path, text: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of a package module in the file at ``relative`` (to the package)
    holding ``text``, at any depth of the file; ``from .. import store`` imports ``alignit_probe.store``."""
    parts = ["alignit_probe", *relative.with_suffix("").parts]
    here = parts[:-1]  # the package a relative import starts from (a package's __init__: the package itself)
    out = []
    for node in ast.walk(ast.parse(text, str(relative))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("alignit_probe.")]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - (node.level - 1)] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module == "alignit_probe":  # from .. import store; from .. import Probe (the front door's export)
                names = [a.name for a in node.names if not a.name.startswith("__")]  # (__version__: no layer's)
                out += [(node.lineno, f"{module}.{EXPORTS.get(name, name)}") for name in names]
            elif module.startswith("alignit_probe."):
                out.append((node.lineno, module))
    return out


def climbs(relative: Path, text: str) -> list[str]:
    """Each import in the file that reaches a layer above the file's own."""
    source = relative.with_suffix("").parts[0]
    out = []
    for line, module in imported_modules(relative, text):
        target = module.split(".")[1]
        if LAYERS.index(target) > LAYERS.index(source):
            out.append(f"alignit_probe/{relative}:{line} ({source}) imports {module} ({target})")
    return out


def test_the_docstring_declares_every_layer_in_order():
    assert " → ".join(LAYERS) in " ".join(alignit_probe.__doc__.split())
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.name[0] not in "._"}
    assert names - {"data"} == set(LAYERS)


def test_no_import_climbs_a_layer():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != PACKAGE / "__init__.py":  # (the front door: lazy exports of every layer)
            found += climbs(path.relative_to(PACKAGE), path.read_text())
    assert not found, "\n".join(found)


def test_climbing_imports_inside_functions_and_type_checking_are_found():
    text = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..store import layout\n"
    text += "def f():\n    from .. import viz, Probe\n    from .concepts import Concept\n"
    text += "    import alignit_probe.cli.main\n"
    found = climbs(Path("text/prompt_text.py"), text)
    assert [f.split(" imports ")[1] for f in found] == [
        "alignit_probe.store (store)",
        "alignit_probe.viz (viz)",
        "alignit_probe.probe (probe)",
        "alignit_probe.cli.main (cli)",
    ]
    assert climbs(Path("cli/record.py"), text) == []  # the top layer may import any
