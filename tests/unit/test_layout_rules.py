"""The package's shape, checked: no import cycles, no ``_private`` name taken from another module, the read side
(store, analysis) free of torch, plotting libraries imported only when drawing, every module small."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import alignit_probe

ROOT = Path(alignit_probe.__file__).parent
PACKAGE = "alignit_probe"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str) -> list[tuple[str, list[str], bool]]:
    """(imported module, imported names, at module level) of every alignit_probe import in module ``name``."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], id(node) in top) for a in node.names if a.name.startswith(PACKAGE)]
        elif isinstance(node, ast.ImportFrom):
            mod = resolve(name, path.name == "__init__.py", node)
            if mod.startswith(PACKAGE):
                out.append((mod, [a.name for a in node.names], id(node) in top))
    return out


def edges() -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        targets = set()
        for mod, names, _ in imports(name):
            subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES]
            targets |= set(subs) if subs and len(subs) == len(names) else {mod}
        graph[name] = {t for t in targets if t != name and t in MODULES}
    return graph


def test_no_import_cycles():
    graph, state, cycles = edges(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_names_from_other_modules():
    bad = []
    for name, path in MODULES.items():
        for mod, names, _ in imports(name):
            bad += [f"{name} imports {mod}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
        tree = ast.parse(path.read_text())
        aliases = {
            a.asname or a.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and resolve(name, path.name == "__init__.py", node).startswith(PACKAGE)
            for a in node.names
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{name} uses {node.value.id}.{node.attr}")
    assert not bad, bad


@pytest.mark.parametrize("part", ["store", "analysis", "schema", "errors"])
def test_read_side_never_imports_torch(part):
    files = [p for n, p in MODULES.items() if n == f"{PACKAGE}.{part}" or n.startswith(f"{PACKAGE}.{part}.")]
    assert files
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            assert not any(n.split(".")[0] in ("torch", "diffusers", "transformers") for n in names), path


def test_plotting_libraries_are_imported_only_when_drawing():
    for name, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] in ("matplotlib", "seaborn") for n in names), f"{name} imports {names}"


def test_modules_are_small():
    big = {n: len(p.read_text().splitlines()) for n, p in MODULES.items() if len(p.read_text().splitlines()) >= 400}
    assert not big, big


def tiny_store(path: Path) -> Path:
    """A two-model store written through the torch-free writer (synthetic activations)."""
    from alignit_probe.store.batch import Batch
    from alignit_probe.store.writer import StoreWriter

    rng = np.random.default_rng(0)
    roles = np.array([["special", "context", "concept", "context", "special", "padding"]] * 2, dtype=object)

    def batch(shift):
        pt = ("prompt", "token")
        coords = xr.Dataset(
            coords={
                "prompt": [0, 1],
                "token": np.arange(6),
                "prompt_text": ("prompt", np.array(["a b c", "a b c"], dtype=object)),
                "token_id": (pt, np.zeros((2, 6), np.int64)),
                "token_str": (pt, np.full((2, 6), "x", dtype=object)),
                "role": (pt, roles),
                "concept": (pt, np.where(roles == "concept", 0, -1).astype(np.int16)),
                "ref_index": (pt, np.tile(np.arange(6, dtype=np.int16), (2, 1))),
            }
        )
        ptc = ("prompt", "token", "channel")
        x = rng.normal(size=(2, 6, 4)).astype(np.float32) + shift
        text = xr.Dataset(
            {
                "token_embedding": (ptc, x),
                "encoder_output": (ptc, x * 2),
                "encoder_layer": (("prompt", "layer", "token", "channel"), np.stack([x, x], 1)),
            },
            coords={"prompt": [0, 1], "token": np.arange(6), "layer": [0, 1]},
        )
        kv = xr.Dataset({"key": (ptc, x), "value": (ptc, -x)}, coords={"prompt": [0, 1], "token": np.arange(6)})
        return Batch(coords, {"text": text, "kv/down_blocks.0.attentions.0.transformer_blocks.0.attn2": kv})

    with StoreWriter(path, attrs={"custom_models": ["custom"]}, chunk_prompts=2, background=False) as w:
        w.append("baseline", batch(0.0), {"method": "baseline"})
        w.append("custom", batch(0.5), {"method": "test"})
        return w.commit()


def test_open_store_and_compare_import_no_torch(tmp_path):
    store = tiny_store(tmp_path / "s.zarr")
    code = textwrap.dedent(f"""
        import sys
        from alignit_probe import compare, open_store
        tree = open_store({str(store)!r})
        frame = compare(tree)
        assert len(frame) and set(frame.model) == {{"custom"}}, frame
        heavy = [m for m in ("torch", "diffusers", "transformers", "matplotlib") if m in sys.modules]
        assert not heavy, heavy
        print("ok", len(frame))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]


def test_compare_frame_has_exactly_the_json_columns(tmp_path):
    from alignit_probe import compare
    from alignit_probe.schema import ROW_COLUMNS

    frame = compare(tiny_store(tmp_path / "s.zarr"))
    assert tuple(frame.columns) == ROW_COLUMNS
    ctx = frame[(frame.stage == "token_embedding") & (frame.role == "context") & (frame.metric == "relative_l2")]
    assert len(ctx) == 1 and ctx.value.iloc[0] > 0


def test_public_functions_are_annotated():
    """Every public function and method: each parameter (but self/cls) and the return type annotated."""
    missing = []
    for name, path in MODULES.items():

        def walk(body, owner="", name=name):
            for node in body:
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    walk(node.body, node.name + ".", name)
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                    args = [a for a in node.args.args + node.args.kwonlyargs if a.arg not in ("self", "cls")]
                    bare = [a.arg for a in args if a.annotation is None] + (["->"] if node.returns is None else [])
                    if bare:
                        missing.append(f"{name}.{owner}{node.name}: {' '.join(bare)}")

        walk(ast.parse(path.read_text()).body)
    assert not missing, missing
