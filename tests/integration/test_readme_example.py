"""README's notebook-style example runs as written (in a scratch folder)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(blocks[0], str(README), "exec"), scope)  # noqa: S102 - our own README
    rows, images, maps, swapped = scope["rows"], scope["images"], scope["maps"], scope["swapped"]
    assert set(rows.model) == {"cd", "alignit"}
    ctx = rows[(rows.model == "alignit") & (rows.stage == "key") & (rows.role == "context")]
    assert len(ctx) and (ctx.value == 0).all()
    assert set(images) == {"baseline", "cd", "alignit"} and all(len(v) == 1 for v in images.values())
    assert set(maps) == {"baseline", "cd"} and maps["cd"][0]["map"].dims == ("prompt", "token", "y", "x")
    assert set(swapped) == {"A", "B", "keys A + values B"}
    assert (tmp_path / "out/nb/probe.zarr").is_dir()
