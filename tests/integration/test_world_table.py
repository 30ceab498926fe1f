"""analyses/world_table.py end to end at a tiny scale: a trained method, every model's rows for the context
attributes and concept fidelity, the CSV, the markdown table and the figure; bad input in one line."""

import csv
import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "analyses" / "world_table.py"
PNG = b"\x89PNG\r\n\x1a\n"


def run(tmp_path, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ALIGNIT_PROBE_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, str(SCRIPT), *map(str, args)]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def run_here(tmp_path, monkeypatch, capsys, *args):
    """The script in this process, as ``run`` gives it (no interpreter start and imports: for a rerun whose point is
    what it does, not the command's output; the environment and sys.argv are restored afterwards)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.setenv("ALIGNIT_PROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    defaults = dict(
        TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error", TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1"
    )
    for key, value in defaults.items():  # what the script sets by default: restored afterwards, not left behind
        monkeypatch.setenv(key, os.environ.get(key, value))
    monkeypatch.setattr(sys, "argv", [SCRIPT.name, *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr()
    return SimpleNamespace(returncode=exit_.value.code, stdout=out.out, stderr=out.err)


def test_world_table_small(tmp_path, monkeypatch, capsys):
    out = tmp_path / "table"
    done = run(tmp_path, "--out", out, "--samples", 3, "--methods", "custom-diffusion", "--steps", 2, "--no-ablations")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "warning" not in done.stderr.lower(), done.stderr
    rows = list(csv.DictReader((out / "table.csv").open()))
    cells = {(r["method"], r["model"], r["attribute"]) for r in rows}
    expected = {("—", "baseline")} | {("custom-diffusion", m) for m in ("custom", "alignit")}
    assert cells == {(m, model, a) for m, model in expected for a in ("background", "position", "concept_fidelity")}
    for r in rows:
        assert float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"]) and r["n"] == "3"
    assert (out / "table.png").read_bytes()[:8] == PNG
    assert "| custom-diffusion | alignit |" in (out / "table.md").read_text()
    assert (out / "models" / "custom-diffusion" / "pytorch_custom_diffusion_weights.safetensors").is_file()
    # the rerun reuses the trained method: in this process (the command's output was checked above)
    again = run_here(
        tmp_path, monkeypatch, capsys, "--out", out, "--samples", 3, "--methods", "custom-diffusion", "--no-ablations"
    )
    assert again.returncode == 0 and "reusing" in again.stdout, again.stderr


def test_world_table_bad_input_is_one_line(tmp_path):
    done = run(tmp_path, "--out", tmp_path / "t", "--samples", 0)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --samples 0"), done.stderr
