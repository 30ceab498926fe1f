"""The CLI's own edges, as a user meets them: a bad flag or value is one line naming the (sub)command, with a close
flag suggested; Ctrl-C is one line that fits the command (exit 130), also during the first second's imports; progress
bars only where stderr is a terminal (or with --progress)."""

import os
import signal
import subprocess
import sys
import time

import pytest

import alignit_probe.cli as cli
from alignit_probe.cli import main


def run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's errors (and --help) exit
        rc = e.code
    except KeyboardInterrupt:  # escaped main: a failure of this test, not the end of the test session
        pytest.fail("KeyboardInterrupt escaped main()")
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error_line(rc, err, status=2):
    lines = err.splitlines()
    assert rc == status and len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0], err
    assert "usage:" not in err and "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------------ argument errors
PARSE_ERRORS = [
    # (id, argv, what the one line must hold)
    ("no-command", [], ["error: alignit-probe: no command given", "record, compare", "alignit-probe --help"]),
    ("unknown-command", ["comapre"], ["invalid choice: 'comapre'", "did you mean 'compare'?"]),
    ("choice-it-begins-with", ["swap", "--blocks", "middle"], ["invalid choice: 'middle'", "did you mean 'mid'?"]),
    (
        "typo-behind-a-missing-argument",
        ["merge", "a.zarr", "--outt", "m.zarr"],
        ["required: --out; unrecognized: --outt", "did you mean --out?"],
    ),
    (
        "invalid-choice",
        ["compare", "s.zarr", "--stage", "keys"],
        ["error: alignit-probe compare: argument --stage: invalid choice: 'keys'", "did you mean 'key'?"],
    ),
    (
        "missing-required",
        ["record", "--baseline", "x"],
        ["error: alignit-probe record: the following arguments are required: --custom", "alignit-probe record --help"],
    ),
    (
        "unrecognized-close-flag",
        ["alignit", "--baseline", "b", "--custom", "c", "--concept", "t", "--out", "o", "--layer", "up_blocks.1"],
        ["error: alignit-probe alignit: unrecognized arguments: --layer", "did you mean --layers?"],
    ),
    (
        "unrecognized-flag-of-another-command",
        ["compare", "s.zarr", "--layer", "x"],
        ["error: alignit-probe compare: unrecognized arguments: --layer", "--layers is an option of", "record"],
    ),
    (
        "abbreviation",
        ["record", "--baseline", "b", "--custom", "c", "--concept", "t", "--out", "o", "--overw"],
        ["alignit-probe record: unrecognized arguments: --overw", "did you mean --overwrite?"],
    ),
    ("nested-no-command", ["world"], ["error: alignit-probe world: no command given", "eval"]),
    (
        "nested-invalid-choice",
        ["toy", "build", "--out", "x", "--arch", "sd3"],
        [
            "error: alignit-probe toy build: argument --arch: invalid choice: 'sd3'",
            "see alignit-probe toy build --help",
        ],
    ),
    (
        "nested-unrecognized",
        ["world", "eval", "--samplez", "3"],
        ["error: alignit-probe world eval: unrecognized arguments: --samplez 3", "did you mean --samples?"],
    ),
    ("bad-int", ["record", "--seed", "x"], ["alignit-probe record: argument --seed: invalid int value: 'x'"]),
]


@pytest.mark.parametrize("argv, parts", [c[1:] for c in PARSE_ERRORS], ids=[c[0] for c in PARSE_ERRORS])
def test_argument_errors_are_one_line_naming_the_command(argv, parts, capsys):
    rc, out, err = run(argv, capsys)
    line = one_error_line(rc, err)
    assert out == ""
    for part in parts:
        assert part in line, (part, line)


@pytest.mark.parametrize("argv", [["--help"], ["compare", "--help"], ["world", "train", "--help"]])
def test_help_is_argparse_own(argv, capsys):
    rc, out, err = run(argv, capsys)
    assert rc == 0 and err == "" and out.startswith(f"usage: alignit-probe {' '.join(argv[:-1])}".rstrip())
    assert "options:" in out


# ------------------------------------------------------------------------------------------------ Ctrl-C
INTERRUPTS = [
    # (command's module and function, argv ({out}: its --out), a folder the command leaves, the message's part, a
    # part it must not hold)
    ("record", "cmd_record", ["record", "--baseline", "b", "--custom", "c", "--concept", "t", "--out", "{out}"],
     "{out}.partial", "interrupted; what was recorded is kept ({out}.partial) — rerun the same command (record "
     "resumes there)", None),
    ("record", "cmd_record", ["record", "--baseline", "b", "--custom", "c", "--concept", "t", "--out", "{out}"], None,
     "interrupted; nothing was written — rerun the same command", "resumes"),
    ("compare", "cmd_compare", ["compare", "s.zarr"], None, "interrupted; nothing was written — rerun", "resumes"),
    ("alignit", "cmd_alignit", ["alignit", "--baseline", "b", "--custom", "c", "--concept", "t", "--out", "{out}"],
     None, "nothing half-written was left", "resumes"),
    ("attention", "cmd_attention", ["attention", "--baseline", "b", "--prompt", "p", "--out", "{out}"], None,
     "nothing half-written was left", "resumes"),
    ("report", "cmd_report", ["report", "s.zarr", "--out", "{out}"], None, "nothing half-written was left", "resumes"),
    ("merge", "cmd_merge", ["merge", "a.zarr", "b.zarr", "--out", "{out}"], "{out}.partial",
     "the merged store is unfinished ({out}.partial", "resumes"),
    ("merge", "cmd_merge", ["merge", "a.zarr", "b.zarr", "--out", "{out}"], None, "nothing was written", "partial"),
    ("world", "cmd_eval", ["world", "eval"], None, "nothing was written", "resumes"),
    ("toy", "cmd_toy_build", ["toy", "build", "--out", "{out}"], "{out}", "may be half-written — rerun the same "
     "command with --overwrite", "resumes"),
    ("toy", "cmd_toy_build", ["toy", "build", "--out", "{out}"], None, "nothing was written", "--overwrite"),
]  # fmt: skip


@pytest.mark.parametrize(
    "module, func, argv, leaves, part, absent",
    INTERRUPTS,
    ids=[" ".join(c[2][:2]) + (" (left)" if c[3] else "") for c in INTERRUPTS],
)
def test_interrupt_message_fits_the_command(module, func, argv, leaves, part, absent, tmp_path, monkeypatch, capsys):
    """Ctrl-C while the command runs (here: its function raises KeyboardInterrupt): one line, exit 130, saying what
    was left (as found on disk) and what to do; only record resumes."""
    import importlib

    out = str(tmp_path / "out")

    def interrupted(args):
        if leaves:
            os.mkdir(leaves.format(out=out))
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(f"alignit_probe.cli.{module}"), func, interrupted)
    rc, _, err = run([a.format(out=out) for a in argv] + ["--no-progress"] * (module in ("compare", "world")), capsys)
    line = one_error_line(rc, err, status=130)
    assert line.startswith("error: interrupted") and part.format(out=out) in line, line
    assert absent is None or absent not in line, line


def test_interrupt_while_the_parser_imports_is_one_line(monkeypatch, capsys):
    def slow_imports():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", slow_imports)
    rc, _, err = run(["record", "--baseline", "b"], capsys)
    assert one_error_line(rc, err, status=130) == "error: interrupted — rerun the same command"


def test_sigint_during_the_first_imports_is_one_line(tmp_path):
    """A real Ctrl-C (SIGINT) while torch imports, as `timeout -s INT 0.5 alignit-probe record …` sends it."""
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # (an inherited SIG_IGN)
        "from alignit_probe.cli import main\n"
        "print('ready', flush=True)\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["record", "--baseline", "b", "--custom", "c", "--concept", "t", "--out", str(tmp_path / "s.zarr")]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "ready\n"
    time.sleep(0.3)  # inside main: the parser's imports (torch) take longer than this
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert [ln for ln in err.splitlines() if ln.strip()] == [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert err.count("error: interrupted") == 1, err


def test_sigint_python_swallows_during_the_imports_is_one_line(tmp_path):
    """A Ctrl-C that lands in a weakref callback (importlib's module-lock callbacks, while the parser's imports run)
    is swallowed by Python ("Exception ignored …"): it still ends the command, as one line, status 130. The callback
    is made to run deterministically here, inside ``build_parser``."""
    code = (
        "import signal, sys, weakref; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import alignit_probe.cli as cli\n"
        "real = cli.build_parser\n"
        "class Lock: pass\n"
        "def build_parser():\n"
        "    lock = Lock()\n"
        "    ref = weakref.ref(lock, lambda _: signal.getsignal(signal.SIGINT)(signal.SIGINT, None))\n"
        "    del lock  # the callback runs: its KeyboardInterrupt is printed as ignored, and lost\n"
        "    return real()\n"
        "cli.build_parser = build_parser\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    argv = ["record", "--baseline", "b", "--custom", "c", "--concept", "t", "--prompt", "a t", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and "Traceback" not in done.stderr and "ignored" not in done.stderr, done.stderr
    assert [ln for ln in done.stderr.splitlines() if ln.strip()] == [
        "error: interrupted; nothing was written — rerun the same command"
    ]


# ------------------------------------------------------------------------------------------------ progress bars
@pytest.fixture
def restore_env(monkeypatch):
    """main() sets the libraries' progress variables in os.environ: put them back after the test."""
    for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def bar_in(err):
    return "%|" in err or "it/s]" in err or "prompt/s]" in err


def test_no_progress_bars_when_stderr_is_not_a_terminal(toy_dir, cd_dir, tmp_path, monkeypatch, capsys, restore_env):
    import alignit_probe.cli.parsing as parsing

    store = str(tmp_path / "s.zarr")
    argv = ["record", "--baseline", toy_dir, "--custom", cd_dir, "--concept", "<new1>", "--class-word", "cat"]
    rc, _, err = run([*argv, "--prompt", "a <new1> cat", "--out", store], capsys)
    assert rc == 0 and not bar_in(err) and "loading baseline" not in err, err
    assert os.environ.get("TQDM_DISABLE") == "1" and os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1"
    rc, _, err = run(["compare", store], capsys)
    assert rc == 0 and not bar_in(err), err
    # asked for: shown all the same
    rc, _, err = run(["compare", store, "--progress"], capsys)
    assert rc == 0 and "compare:" in err and bar_in(err), err
    # on a terminal: as before, on unless --no-progress
    monkeypatch.setattr(parsing, "stderr_is_terminal", lambda: True)
    rc, _, err = run(["compare", store], capsys)
    assert rc == 0 and "compare:" in err and bar_in(err), err
    rc, _, err = run(["compare", store, "--no-progress"], capsys)
    assert rc == 0 and not bar_in(err), err


def test_progress_and_no_progress_together_is_one_line(capsys, restore_env):
    rc, _, err = run(["compare", "s.zarr", "--progress", "--no-progress"], capsys)
    assert "--progress and --no-progress" in one_error_line(rc, err)
