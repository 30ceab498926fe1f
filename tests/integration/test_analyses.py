"""The analysis scripts (analyses/*.py), each run as one command on stores recorded with the CLI on the toy model:
they write their CSV/figure, their numbers agree with ``compare``, shards read as one store, and bad input ends in
one ``error: …`` line with exit status 2."""

import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from alignit_probe import Concept, Probe, compare
from alignit_probe.cli import main

ANALYSES = Path(__file__).resolve().parents[2] / "analyses"
PROMPTS = ["photo of a {} on the beach", "a {} wearing a red hat", "a {} sleeping in the snow", "a painting of a {}"]
PNG = b"\x89PNG\r\n\x1a\n"


def script(name, *args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(ANALYSES / f"{name}.py"), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def inproc(tmp_path, capsys, monkeypatch):
    """Run a script in this process (bad inputs end before any heavy work: no interpreter start per case)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ANALYSES))
    for key, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"), ("TQDM_DISABLE", "1")):
        monkeypatch.setenv(key, os.environ.get(key, value))  # restored afterwards: nothing leaks into other tests
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1"))

    def run(name, *args):
        monkeypatch.setattr(sys, "argv", [f"{name}.py", *map(str, args)])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(ANALYSES / f"{name}.py"), run_name="__main__")
        out = capsys.readouterr()
        return SimpleNamespace(returncode=exit_.value.code, stdout=out.out, stderr=out.err)

    return run


def record(toy_dir, cd_dir, prompts, out, *extra):
    argv = ["record", "--baseline", toy_dir, "--custom", cd_dir, "--concept", "<new1>", "--class-word", "cat"]
    argv += ["--prompts", str(prompts), "--out", str(out), "--no-progress", "--batch-size", "2", *extra]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def stores(toy_dir, cd_dir, one_thread, tmp_path_factory):
    """An AlignIT store, the same job as two shards, and a store without AlignIT."""
    d = tmp_path_factory.mktemp("analyses")
    prompts = d / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    full = record(toy_dir, cd_dir, prompts, d / "probe.zarr", "--alignit")
    # the same job's shards and a store without AlignIT through what `record` runs (Probe.record, the same
    # options), the models loaded once for the three instead of once per command
    probe = Probe(toy_dir, cd_dir, [Concept("<new1>", "cat")], progress=False)
    texts = [p.format("<new1> cat") for p in PROMPTS]
    shards = [probe.record(texts, d / f"probe-{i}.zarr", batch_size=2, alignit=True, shard=(i, 2)) for i in (0, 1)]
    plain = probe.record(texts, d / "plain.zarr", batch_size=2)
    return dict(full=full, shards=shards, plain=plain)


def ok(result):
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def one_error_line(result, *parts):
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def test_stage_dissection_table(stores, tmp_path):
    out = ok(script("stage_dissection", stores["full"], "--out", "table.csv", cwd=tmp_path))
    assert "context/concept" in out and "encoder_layer" in out
    t = pd.read_csv(tmp_path / "table.csv")
    assert list(t.columns) == ["model", "stage", "role", "metric", "value", "ci_low", "ci_high", "n", "layers"]
    assert set(t.model) == {"custom", "alignit"} and set(t.role) == {"concept", "context"}
    assert set(t[t.model == "custom"].stage) == {"token_embedding", "encoder_layer", "encoder_output", "key", "value"}
    assert set(t[t.model == "alignit"].stage) == {"key", "value"}
    assert (t.n == len(PROMPTS)).all() and (t.metric == "relative_l2").all()
    assert np.isfinite(t.value).all() and (t.value >= 0).all()
    assert ((t.ci_low <= t.value + 1e-12) & (t.value <= t.ci_high + 1e-12)).all()
    layers = t.drop_duplicates("stage").set_index("stage").layers
    assert layers["token_embedding"] == 1 and layers["encoder_layer"] == 3 and layers["key"] == 7

    v = t.set_index(["model", "stage", "role"]).value
    assert v["custom", "token_embedding", "context"] == 0 < v["custom", "token_embedding", "concept"]
    assert v["custom", "encoder_output", "context"] > 0  # the paper's finding: the context drifts too
    for stage in ("key", "value"):
        assert v["alignit", stage, "context"] == 0 < v["alignit", stage, "concept"]

    # the mean over layers is the mean of compare's per-layer values
    rows = compare(stores["full"])
    rows = rows[(rows.metric == "relative_l2") & rows.role.isin(["concept", "context"])]
    per_layer = rows.groupby(["model", "stage", "role"]).value.mean()
    np.testing.assert_allclose(v.sort_index(), per_layer.reindex(v.index).sort_index(), rtol=1e-9, atol=1e-12)


def test_stage_dissection_reads_shards_as_one_store(stores, tmp_path, inproc):
    """In this process (the script as a command: test_stage_dissection_table)."""
    ok(inproc("stage_dissection", stores["full"], "--out", "full.csv", "--metric", "cosine_distance"))
    ok(inproc("stage_dissection", *stores["shards"], "--out", "shards.csv", "--metric", "cosine_distance"))
    full, shards = pd.read_csv(tmp_path / "full.csv"), pd.read_csv(tmp_path / "shards.csv")
    assert (full.metric == "cosine_distance").all()
    pd.testing.assert_frame_equal(full, shards, rtol=1e-9)


def test_alignit_before_after_figure(stores, tmp_path):
    out = ok(script("alignit_before_after", *stores["shards"], "--out", "fig.png", "--csv", "rows.csv", cwd=tmp_path))
    assert "figure written" in out
    assert (tmp_path / "fig.png").read_bytes()[:8] == PNG
    t = pd.read_csv(tmp_path / "rows.csv")
    assert set(t.model) == {"custom", "alignit"}
    after = t[(t.model == "alignit") & (t.role == "context")]
    assert set(after.stage) == {"key", "value"} and (after.value == 0).all() and (after.ci_high == 0).all()
    before = t[(t.model == "custom") & (t.role == "context") & t.stage.isin(["key", "value"])]
    assert (before.value > 0).all()


def test_kv_control_figure(toy_dir, tmp_path, inproc):
    """In this process (the script as a command: test_help, test_a_failing_script_prints_no_traceback)."""
    args = ["--baseline", toy_dir, "--key-prompt", "a dog on the grass", "--value-prompt", "a cat in the snow"]
    out = ok(inproc("kv_control", *args, "--tokens", "dog", "--steps", "2", "--out", "swap.png"))
    assert (tmp_path / "swap.png").read_bytes()[:8] == PNG
    assert "all layers" in out and all(f"{b} only" in out for b in ("down", "mid", "up"))


def test_bad_inputs_are_one_line(stores, toy_dir, tmp_path, inproc):
    one_error_line(inproc("stage_dissection", tmp_path / "nope.zarr"), "does not exist")
    one_error_line(inproc("stage_dissection", stores["full"], "--out", "t.txt"), ".csv")
    one_error_line(inproc("stage_dissection", stores["full"], "--out", "no/t.csv"), "does not exist")
    one_error_line(inproc("stage_dissection", stores["full"], "--model", "nope"), "choose among")
    one_error_line(inproc("stage_dissection", stores["shards"][0], stores["full"]), "not a shard")
    one_error_line(inproc("stage_dissection", stores["full"], "--metric", "l1"), "--help")
    one_error_line(inproc("alignit_before_after", stores["plain"], "--out", "f.png"), "--alignit")
    one_error_line(inproc("alignit_before_after", stores["full"]), "--out")
    args = ["--key-prompt", "a dog", "--value-prompt", "a cat", "--steps", "2"]
    one_error_line(inproc("kv_control", "--baseline", toy_dir, *args, "--out", "f.gif"), ".png")
    one_error_line(inproc("kv_control", "--baseline", tmp_path / "none", *args, "--out", "f.png"), "does not exist")
    one_error_line(inproc("kv_control", "--baseline", toy_dir, *args, "--tokens", "zebra", "--out", "f.png"), "zebra")
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.csv"))


def test_a_failing_script_prints_no_traceback(tmp_path):
    """The same, as a command: one line on stderr, exit status 2."""
    one_error_line(script("stage_dissection", tmp_path / "nope.zarr", cwd=tmp_path), "does not exist")


@pytest.mark.parametrize("name", ["stage_dissection", "kv_control", "alignit_before_after"])
def test_help(name, tmp_path):
    assert "usage:" in ok(script(name, "--help", cwd=tmp_path))
