"""The CLI as a new user meets it: every bad input is one line, exit 2, no traceback, nothing written."""

import json
import os
import subprocess
import sys

import pytest

from alignit_probe.cli import main

BAD = "error: "


def run(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, [ln for ln in err if ln.startswith(BAD) or "Traceback" in ln]


def record_args(toy_dir, cd_dir, out, *extra):
    return [
        "record",
        "--baseline",
        toy_dir,
        "--custom",
        cd_dir,
        "--concept",
        "<new1>",
        "--class-word",
        "cat",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "photo of a cat"], "absent from prompt"),
        (["--prompt", "photo of a <new9> cat", "--concept", "<new9>"], "unknown to the customized"),
        (["--prompt", "photo of a <new1> cat", "--alignit", "--alpha", "2"], "outside [0, 1]"),
        (["--prompt", "photo of a <new1> cat", "--alignit", "--layers", "down_blocks.9.attn2"], "valid layers"),
        (["--prompt", "photo of a <new1> cat", "--alignit", "--template", "a photo"], "placeholder"),
    ],
)
def test_bad_record_inputs(toy_dir, cd_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "s.zarr"
    rc, lines = run(record_args(toy_dir, cd_dir, out, *extra), capsys)
    assert rc == 2 and len(lines) == 1 and message in lines[0], lines
    assert not out.exists() and not (tmp_path / "s.zarr.partial").exists()


def test_empty_prompts_file_and_existing_output(toy_dir, cd_dir, tmp_path, capsys):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n# nothing\n")
    rc, lines = run(record_args(toy_dir, cd_dir, tmp_path / "a.zarr", "--prompts", str(empty)), capsys)
    assert rc == 2 and "is empty" in lines[0]
    existing = tmp_path / "b.zarr"
    existing.mkdir()
    (existing / "keep").write_text("mine")
    rc, lines = run(record_args(toy_dir, cd_dir, existing, "--prompt", "a <new1> cat"), capsys)
    assert rc == 2 and "is not an alignit-probe store" in lines[0] and (existing / "keep").read_text() == "mine"


def test_record_then_compare_with_prompts_file_template(toy_dir, cd_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("photo of a {} on the beach\n{} wearing a hat\n")
    out = tmp_path / "s.nc"
    assert main(record_args(toy_dir, cd_dir, out, "--prompts", str(prompts), "--alignit")) == 0
    capsys.readouterr()
    assert main(["compare", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "alignit" in table and "learned embeddings" in table and "<new1>" in table
    rc, lines = run(["compare", str(out), "--stage", "attention_map", "--no-progress"], capsys)  # no maps recorded
    assert rc == 2 and len(lines) == 1 and "no rows match --stage attention_map" in lines[0]
    rc, lines = run(["compare", str(out), "--model", "baseline", "--no-progress"], capsys)
    assert rc == 2 and len(lines) == 1 and "the baseline is the reference" in lines[0] and "custom" in lines[0]


def test_compare_says_when_chunk_files_are_missing(toy_dir, cd_dir, tmp_path, capsys):
    """zarr reads a missing chunk file as NaN without a word: compare says which arrays hold no finite values."""
    out = tmp_path / "s.zarr"
    assert main(record_args(toy_dir, cd_dir, out, "--prompt", "a <new1> cat", "--prompt", "a <new1> cat on a rug")) == 0
    site = sorted((out / "custom" / "kv").iterdir())[0]
    for chunk in (site / "key").glob("c*"):
        chunk.unlink()
    capsys.readouterr()
    assert main(["compare", str(out), "--stage", "key", "value", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"custom key {site.name}: no finite values in the store" in err, err
    assert err.count("no finite values") == 1, err  # the value arrays of that site, and every other array, are whole


def test_console_script_error_has_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run(
        [sys.executable, "-m", "alignit_probe.cli", "compare", str(tmp_path / "missing.zarr")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: store") and "Traceback" not in r.stderr


def test_alignit_command_writes_grid_and_store(toy_dir, cd_dir, tmp_path, capsys):
    out = tmp_path / "al"
    argv = [
        "alignit",
        "--baseline",
        toy_dir,
        "--custom",
        cd_dir,
        "--concept",
        "<new1>",
        "--class-word",
        "cat",
        "--prompt",
        "photo of a <new1> cat on the beach",
        "--steps",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert (out / "grid.png").exists() and len(list((out / "images").glob("*.png"))) == 3
    assert main(["compare", str(out / "store.zarr"), "--json"]) == 0
    assert '"model": "alignit"' in capsys.readouterr().out
    rc, lines = run(argv, capsys)  # exists now
    assert rc == 2 and "not empty" in lines[0]


def test_swap_command(toy_dir, tmp_path, capsys):
    out = tmp_path / "swap"
    argv = [
        "swap",
        "--baseline",
        toy_dir,
        "--key-prompt",
        "a dog on the grass",
        "--value-prompt",
        "a cat in the snow",
        "--tokens",
        "dog",
        "--blocks",
        "up",
        "--steps",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    long = argv.index("a dog on the grass")
    assert main(argv[:long] + ["a dog on the grass" + " and more" * 40] + argv[long + 1 :]) == 0
    err = capsys.readouterr().err  # a truncated prompt is said, once, as record, alignit and attention say it
    assert err.count("warning: key prompt (A)") == 1 and "token(s) beyond the encoder's 77 dropped" in err, err
    assert (out / "grid.png").exists() and len(list((out / "images").glob("000-*.png"))) == 3
    assert json.loads((out / "config.json").read_text())["tokens"] == ["dog"]
    rc, lines = run(argv[:-3] + ["--tokens", "zebra", "--out", str(tmp_path / "s2")], capsys)
    assert rc == 2 and "none of the tokens" in lines[0] and not (tmp_path / "s2").exists()
    rc, lines = run(
        [
            "swap",
            "--baseline",
            toy_dir,
            "--key-prompt",
            "a",
            "--value-prompt",
            "b",
            "--key-model",
            "custom",
            "--out",
            str(tmp_path / "s3"),
        ],
        capsys,
    )
    assert rc == 2 and "customized model" in lines[0]
