"""analyses/world_table.py end to end at a tiny scale: a trained method, every model's rows for the context
attributes and concept fidelity, the CSV, the markdown table and the figure; bad input in one line."""

import csv
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "analyses" / "world_table.py"
PNG = b"\x89PNG\r\n\x1a\n"


def run(tmp_path, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ALIGNIT_PROBE_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, str(SCRIPT), *map(str, args)]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_world_table_small(tmp_path):
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
    again = run(tmp_path, "--out", out, "--samples", 3, "--methods", "custom-diffusion", "--no-ablations")
    assert again.returncode == 0 and "reusing" in again.stdout, again.stderr


def test_world_table_bad_input_is_one_line(tmp_path):
    done = run(tmp_path, "--out", tmp_path / "t", "--samples", 0)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --samples 0"), done.stderr
