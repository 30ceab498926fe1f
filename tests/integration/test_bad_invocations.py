"""What a new user meets first, table-driven: every bad invocation ends in exit 2 and one line naming the problem
and the fix (``error: … — …``), no traceback, nothing written; warnings print once each."""

from pathlib import Path

import pytest
import torch

from alignit_probe.cli import main


def run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    err = capsys.readouterr().err
    return rc, err


def base_args(toy_dir, cd_dir, out):
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
        "--prompt",
        "photo of a <new1> cat",
        "--out",
        str(out),
        "--no-progress",
    ]


def swap(args, old, new):
    args = list(args)
    args[args.index(old)] = new
    return args


CASES = [
    # (id, how to change the valid record invocation, message part)
    ("cuda-without-gpu", lambda a, t: a + ["--device", "cuda"], "no CUDA GPU"),
    ("bad-device", lambda a, t: a + ["--device", "tpu9"], "unknown device"),
    ("missing-baseline", lambda a, t: swap(a, a[2], str(t / "nope")), "does not exist"),
    ("baseline-not-a-pipeline", lambda a, t: swap(a, a[2], str(t)), "not a diffusers pipeline directory"),
    ("missing-custom-folder", lambda a, t: swap(a, a[4], "nope/"), "customization nope/ does not exist"),
    ("bad-model-name", lambda a, t: swap(a, a[4], "baseline=" + a[4]), "bad model name"),
    ("unknown-concept", lambda a, t: a + ["--concept", "<new9>", "--prompt", "a <new9> dog"], "<new1>"),
    ("concept-absent", lambda a, t: swap(a, "photo of a <new1> cat", "photo of a dog"), "absent from prompt"),
    ("concept-cut-off", lambda a, t: swap(a, "photo of a <new1> cat", "word " * 80 + "a <new1> cat"), "is cut off"),
    ("too-many-placeholders", lambda a, t: swap(a, "photo of a <new1> cat", "{} and {}"), "placeholders"),
    ("class-words-exceed", lambda a, t: a + ["--class-word", "dog"], "more --class-word"),
    ("bad-shard", lambda a, t: a + ["--shard", "3/2"], "shard index"),
    ("bad-batch", lambda a, t: a + ["--batch-size", "0"], "batch size"),
    ("clip-skip-too-deep", lambda a, t: a + ["--clip-skip", "99"], "reaches past the first layer"),
    ("bad-alpha", lambda a, t: a + ["--alignit", "--alpha", "1.5"], "outside [0, 1]"),
    ("bad-template", lambda a, t: a + ["--alignit", "--template", "a photo"], "placeholder"),
    ("bad-layer", lambda a, t: a + ["--alignit", "--layers", "up_blocks.9.attn2"], "valid layers"),
    ("missing-prompts-file", lambda a, t: a + ["--prompts", str(t / "none.txt")], "prompts file"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_record_invocation(case, toy_dir, cd_dir, tmp_path, capsys):
    _, change, message = case
    if case[0] == "cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "s.zarr"
    rc, err = run(change(base_args(toy_dir, cd_dir, out), tmp_path), capsys)
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and message in errors[0] and " — " in errors[0], err
    assert "Traceback" not in err
    assert not out.exists() and not (tmp_path / "s.zarr.partial").exists()


@pytest.mark.parametrize("command", ["record", "alignit", "report"])
def test_out_onto_an_input_is_refused_even_with_overwrite(command, toy_dir, cd_dir, tmp_path, capsys):
    """--out naming one of the command's inputs (or a folder holding one) would delete it: refused before any work,
    the input untouched (copies here, so a failure cannot harm the session's fixtures)."""
    import shutil

    base, art = tmp_path / "base", tmp_path / "arts"
    shutil.copytree(toy_dir, base)
    shutil.copytree(cd_dir, art / "cd")
    store = tmp_path / "s.zarr"
    (store / "sub").mkdir(parents=True)
    before = {p: sorted(x.name for x in p.rglob("*")) for p in (base, art, store)}
    record = swap(base_args(str(base), str(art / "cd"), tmp_path / "o"), str(tmp_path / "o"), str(base))
    argv, message = {
        "record": (record + ["--overwrite"], "is the input"),  # --out = --baseline
        # --out = the folder holding the NAME=SPEC artifact
        "alignit": (["alignit"] + base_args(str(base), "m=" + str(art / "cd"), art)[1:] + ["--overwrite"], "contains"),
        "report": (["report", str(store), "--out", str(store), "--overwrite"], "is the input"),  # --out = the store
    }[command]
    rc, err = run(argv, capsys)
    assert rc == 2 and err.count("error: ") == 1 and message in err and "Traceback" not in err, err
    assert {p: sorted(x.name for x in p.rglob("*")) for p in (base, art, store)} == before


def test_cd_folder_without_weights_names_the_missing_file(toy_dir, cd_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "cd"
    shutil.copytree(cd_dir, broken)
    for f in broken.glob("pytorch_custom_diffusion_weights.*"):
        f.unlink()
    rc, err = run(swap(base_args(toy_dir, cd_dir, tmp_path / "s.zarr"), cd_dir, str(broken)), capsys)
    assert rc == 2 and "pytorch_custom_diffusion_weights.safetensors" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        # no abbreviations: --concep is not --concept, --overw is not --overwrite
        (["record", "--baseline", "b", "--custom", "c", "--concept", "t", "--out", "o", "--overw"], "unrecognized"),
        (["compare"], "required"),
        (["compare", "s.zarr", "--jso"], "unrecognized arguments: --jso"),
    ],
)
def test_argparse_refuses_abbreviations_and_missing_arguments(argv, message, capsys):
    rc, err = run(argv, capsys)
    assert rc == 2 and message in err and "Traceback" not in err


def test_compare_on_partial_and_missing_store(tmp_path, capsys):
    rc, err = run(["compare", str(tmp_path / "nope.zarr")], capsys)
    assert rc == 2 and "does not exist" in err
    (tmp_path / "x.zarr.partial").mkdir()
    rc, err = run(["compare", str(tmp_path / "x.zarr")], capsys)
    assert rc == 2 and "rerun the same record command" in err
    rc, err = run(["compare", str(tmp_path / "x.zarr.partial")], capsys)
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err
    import json

    from alignit_probe.store.layout import FORMAT

    meta = {"zarr_format": 3, "node_type": "group", "attributes": {"format": FORMAT, "written": "{}"}}
    (tmp_path / "x.zarr.partial" / "zarr.json").write_text(json.dumps(meta))  # as a recording leaves it
    for extra in ([], ["--out", str(tmp_path / "r.html")]):
        rc, err = run(["report" if extra else "compare", str(tmp_path / "x.zarr.partial"), *extra], capsys)
        assert rc == 2 and err.count("\n") == 1 and "is an unfinished recording" in err, err  # no library warning


def test_what_is_no_store_is_named(toy_dir, tmp_path, capsys):
    """A pipeline, an output folder of alignit/attention, a text file, an empty folder where a store belongs."""
    (tmp_path / "al" / "store.zarr").mkdir(parents=True)
    (tmp_path / "al" / "store.zarr" / "zarr.json").write_text("{}")
    (tmp_path / "p.txt").write_text("a prompt")
    (tmp_path / "empty").mkdir()
    for path, message in (
        (
            toy_dir,
            f"is a diffusers pipeline, not a store — record one first: alignit-probe record --baseline {toy_dir}",
        ),
        (tmp_path / "al", f"is an output folder holding a store — pass {tmp_path / 'al' / 'store.zarr'}"),
        (tmp_path / "p.txt", "is a file but no store"),
        (tmp_path / "empty", "is a folder but no zarr store"),
    ):
        for argv in (["compare", str(path)], ["report", str(path), "--out", str(tmp_path / "r.html")]):
            rc, err = run(argv, capsys)
            assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "r.html").exists()


def test_store_outputs_named_like_other_files_are_refused(toy_dir, cd_dir, tmp_path, capsys):
    from alignit_probe.store.layout import check_output

    for name in ("s.txt", "m2.TXT", "out.html", "w.safetensors"):
        argv = ["record", "--baseline", toy_dir, "--custom", cd_dir, "--concept", "<new1>", "--class-word", "cat"]
        rc, err = run(argv + ["--prompt", "a <new1> cat", "--out", str(tmp_path / name)], capsys)
        assert rc == 2 and err.count("\n") == 1 and "a store is a zarr folder" in err, err
        assert f"name it {Path(name).stem}.zarr" in err and not (tmp_path / name).exists()
    for fine in ("s.zarr", "s.nc", "run_2026.11.28", "store"):
        assert check_output(tmp_path / fine, False) == tmp_path / fine


def test_generation_arguments_are_checked_before_loading(toy_dir, cd_dir, tmp_path, capsys):
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
        "a <new1> cat",
        "--out",
        str(tmp_path / "al"),
        "--no-progress",
    ]
    for extra, message in ((["--steps", "0"], "--steps"), (["--height", "30"], "multiple of 8")):
        rc, err = run(argv + extra, capsys)
        assert rc == 2 and message in err and not (tmp_path / "al").exists()


def test_warnings_print_once_and_missing_class_word_is_said(toy_dir, cd_dir, tmp_path, capsys):
    long = "photo of a <new1> cat " + "on a very long sunny beach " * 16
    argv = [
        "record",
        "--baseline",
        toy_dir,
        "--custom",
        cd_dir,
        "--concept",
        "<new1>",
        "--prompt",
        long,
        "--prompt",
        "a <new1> cat",
        "--out",
        str(tmp_path / "s.zarr"),
        "--no-progress",
    ]
    rc, err = run(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert rc == 0
    assert sum("has no class word" in ln for ln in lines) == 1, err  # said once: before loading, and in the store
    truncated = [ln for ln in lines if "truncated" in ln]
    assert truncated and len(truncated) == len(set(truncated)), lines


def test_artifact_that_changes_nothing_is_said_on_stderr(toy_dir, tmp_path, capsys):
    from tests.integration.artifact_files import write_lora

    write_lora(toy_dir, tmp_path / "zero", zero=True)
    argv = [
        "record",
        "--baseline",
        toy_dir,
        "--custom",
        str(tmp_path / "zero"),
        "--concept",
        "cat",
        "--prompt",
        "a photo of a cat",
        "--out",
        str(tmp_path / "s.zarr"),
        "--no-progress",
    ]
    rc, err = run(argv, capsys)
    lines = [ln for ln in err.splitlines() if "changed nothing" in ln]
    assert rc == 0 and len(lines) == 1 and lines[0].startswith("warning: "), err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["alignit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 30)", "(default: 7.5)", "(default: 1.0)", "(default: photo of a {concept})"):
        assert default in out, default


@pytest.mark.parametrize(
    "cls",
    ["StableDiffusion3Pipeline", "FluxPipeline", "PixArtAlphaPipeline", "MysteryPipeline", None],
)
@pytest.mark.parametrize("where", ["baseline", "custom"])
def test_unsupported_pipeline_class_is_one_line(cls, where, toy_dir, cd_dir, tmp_path, capsys):
    """A pipeline directory of another class (SD3, FLUX, PixArt, unknown, none) is refused from its
    model_index.json alone: exit 2, one line naming the class, no traceback, nothing loaded or written."""
    import json

    fake = tmp_path / "fake"
    fake.mkdir()
    index = {"_class_name": cls, "_diffusers_version": "0.42.1"} if cls else {"_diffusers_version": "0.42.1"}
    (fake / "model_index.json").write_text(json.dumps(index))
    args = base_args(toy_dir, cd_dir, tmp_path / "s.zarr")
    args = swap(args, toy_dir, str(fake)) if where == "baseline" else swap(args, cd_dir, str(fake))
    rc, err = run(args, capsys)
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"error: not supported: {fake} is a {cls or 'pipeline of unknown class'}"), errors
    assert "StableDiffusionXLPipeline" in errors[0] and not (tmp_path / "s.zarr").exists()


def test_unsupported_class_from_python(tmp_path):
    import json

    from alignit_probe.errors import ProbeError
    from alignit_probe.models.load import load_pipeline

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ProbeError, match=f"not supported: {tmp_path} is a FluxPipeline"):
        load_pipeline(str(tmp_path))


def test_swap_names_a_model_that_is_not_loaded(toy_dir, tmp_path, capsys):
    argv = [
        "swap",
        "--baseline",
        toy_dir,
        "--key-prompt",
        "a dog",
        "--value-prompt",
        "a cat",
        "--key-model",
        "mine",
        "--out",
        str(tmp_path / "sw"),
        "--no-progress",
    ]
    rc, err = run(argv, capsys)
    assert rc == 2 and "key model 'mine' is not loaded" in err and "Traceback" not in err
    assert not (tmp_path / "sw").exists()


def test_swap_says_a_customized_model_it_does_not_use(toy_dir, cd_dir, tmp_path, capsys):
    argv = ["swap", "--baseline", toy_dir, "--custom", cd_dir, "--concept", "<new1>", "--key-prompt", "a dog"]
    argv += ["--value-prompt", "a cat", "--steps", "1", "--height", "32", "--width", "32", "--no-progress"]
    rc, err = run(argv + ["--out", str(tmp_path / "a")], capsys)
    assert rc == 0 and err.count("warning: the customized model is loaded but unused") == 1, err
    rc, err = run(argv + ["--key-model", "custom", "--out", str(tmp_path / "b")], capsys)
    assert rc == 0 and "unused" not in err, err


@pytest.mark.parametrize("window", ["10:20", "0:5"])
def test_step_window_beyond_the_steps_is_refused(window, toy_dir, tmp_path, capsys):
    """A window past the last denoising step would sum nothing (or less than it names): refused before loading."""
    out = tmp_path / "maps"
    argv = ["attention", "--baseline", toy_dir, "--prompt", "a dog", "--steps", "4", "--step-window", window]
    rc, err = run(argv + ["--out", str(out), "--no-progress"], capsys)
    assert rc == 2 and "ends after the last of the 4 denoising steps" in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("command", ["record", "alignit", "attention"])
def test_prompt_and_template_mistakes_are_said_before_any_model_loads(command, toy_dir, tmp_path, capsys):
    """The customized model given does not even exist: the error about the prompt (or the dummy template) must come
    first, as it does when told on the text alone, before seconds of loading."""
    args = swap(base_args(toy_dir, str(tmp_path / "missing"), tmp_path / "o"), "record", command)
    rc, err = run(swap(args, "photo of a <new1> cat", "photo of a cat"), capsys)
    assert rc == 2 and "absent from prompt" in err and "Traceback" not in err, err
    rc, err = run(args + ["--template", "a photo"] + (["--alignit"] if command == "record" else []), capsys)
    assert rc == 2 and "has no {concept} placeholder" in err, err
    at = args.index("--prompt")
    rc, err = run(args[:at] + args[at + 2 :] + ["--prompts", "/dev/null"], capsys)  # not "does not exist"
    assert rc == 2 and "prompts file /dev/null is empty" in err, err


def test_out_checks_look_at_paths_only_and_keep_the_working_directory(toy_dir, tmp_path, capsys, monkeypatch):
    """Only path arguments count as inputs (a rerun with --out named like the command or a class word works);
    an --out holding the working directory is refused, not emptied."""
    monkeypatch.chdir(tmp_path)
    gen = ["--steps", "1", "--height", "32", "--width", "32", "--no-progress"]
    swap = ["swap", "--baseline", toy_dir, "--key-prompt", "a dog", "--value-prompt", "a cat", *gen]
    for _ in range(2):  # the second run replaces ./swap, named like the command
        rc, err = run(swap + ["--out", "swap", "--overwrite"], capsys)
        assert rc == 0 and "error" not in err, err
    (tmp_path / "here").mkdir()
    (tmp_path / "keep.txt").write_text("x")
    monkeypatch.chdir(tmp_path / "here")
    for out in (".", ".."):
        rc, err = run(swap + ["--out", out, "--overwrite"], capsys)
        assert rc == 2 and "holds the working directory" in err, err
    assert (tmp_path / "keep.txt").is_file() and (tmp_path / "here").is_dir()
