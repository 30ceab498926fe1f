"""alignit-probe: record, compare, merge, alignit, swap, attention, report, demo, toy, world, clipscore.

One module per command over ``common``; every command uses the public Python API (``Probe``, ``compare``,
``open_store`` …). Every bad input ends with one line ``error: <problem> — <fix>`` on stderr and exit status 2, no
traceback (a bad flag too: ``parsing``); library warnings (``ProbeWarning``) print as ``warning: …`` once each.
Ctrl-C is one line saying what the command left, exit status 130. Progress bars only where stderr is a terminal
(``--progress`` asks for them elsewhere, ``--no-progress`` turns them off)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

from ..errors import ProbeError, ProbeWarning

COMMANDS = ("record", "compare", "merge", "alignit", "swap", "attention", "report", "demo", "toy", "world", "clipscore")


def quiet_libraries(progress: bool = True) -> None:
    """Silence the libraries' own chatter; our warnings print as ``warning: …`` lines."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # no "Retrying in 8s" lines while a download is tried
    if not progress:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TQDM_DISABLE"] = "1"
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # an interrupt leaves zarr's write coroutines unawaited and its event loop's tasks pending: said, not shown
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    libraries = "transformers|diffusers|huggingface_hub|xarray|zarr|torch"
    warnings.filterwarnings("ignore", category=UserWarning, module=libraries)
    warnings.simplefilter("default", ProbeWarning)
    shown: set[str] = set()
    default_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ProbeWarning):
            text = str(message)
            if text not in shown:
                shown.add(text)
                print(f"warning: {text}", file=sys.stderr)
            return
        default_show(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def build_parser() -> argparse.ArgumentParser:
    from importlib import import_module

    from .parsing import Parser, add_progress_flags

    parser = Parser(prog="alignit-probe", description=__doc__.splitlines()[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")  # Parsers too, nested ones as well
    for name in COMMANDS:
        import_module(f".{name}", __name__).add_parser(sub)
    add_progress_flags(parser)
    return parser


def wants_progress(argv: list[str]) -> bool:
    """Progress bars only where someone watches them: stderr a terminal, or asked for with ``--progress`` (a log
    file or CI gets none: a bar redrawn there is noise); ``--no-progress`` always wins."""
    from .parsing import stderr_is_terminal

    return "--no-progress" not in argv and ("--progress" in argv or stderr_is_terminal())


RERUN = "rerun the same command"
STAGED = "nothing half-written was left (outputs are written whole or not at all)"
INTERRUPTED = {  # command → (what Ctrl-C left, what to do[, where it left it: when that is missing, nothing was])
    "record": ("what was recorded is kept ({out}.partial)", f"{RERUN} (record resumes there)", "{out}.partial"),
    "compare": ("nothing was written", RERUN),
    "clipscore": ("nothing was written", RERUN),
    "world eval": ("nothing was written", RERUN),
    "alignit": (STAGED, RERUN),
    "attention": (STAGED, RERUN),
    "swap": (STAGED, RERUN),
    "report": (STAGED, RERUN),
    "world references": (STAGED, RERUN),
    "world train": (STAGED, RERUN),
    "merge": ("the merged store is unfinished ({out}.partial, replaced by the next run)", RERUN, "{out}.partial"),
    "demo": ("", f"{RERUN} (the toy models already written are reused)"),
    "toy build": ("{out} may be half-written", f"{RERUN} with --overwrite", "{out}"),
    "world pipeline": ("{out} may be half-written", f"{RERUN} with --overwrite", "{out}"),
    "world pretrain": ("{out} holds the best weights saved so far", f"use them, or {RERUN} with --overwrite", "{out}"),
}


def interrupted(args: argparse.Namespace | None) -> str:
    """The one line for Ctrl-C: what the command (``None``: not parsed yet) left behind and what to do."""
    from pathlib import Path

    command = getattr(args, "command", None)
    name = " ".join(x for x in (command, getattr(args, f"{command}_command", None)) if x)
    left, fix, *where = INTERRUPTED.get(name, ("", RERUN))
    out = getattr(args, "out", None)
    if where and not (out and Path(where[0].format(out=out)).exists()):
        left, fix = "nothing was written", RERUN
    left = left.format(out=out)
    return f"error: interrupted{'; ' + left if left else ''} — {fix}"


@contextlib.contextmanager
def noticed_interrupts() -> Iterator[list[int]]:
    """Every Ctrl-C noted, also one Python swallows: a ``KeyboardInterrupt`` raised inside a weakref callback or a
    ``__del__`` (importlib's module-lock callbacks, during the first imports) is only printed as "Exception
    ignored …" and lost. Where Python's own handler is in place (left alone otherwise: a caller's choice), a handler
    notes each SIGINT before raising, and the unraisable hook keeps such a lost interrupt off stderr; ``main`` acts
    on a noted one at its next step. Both are restored on exit."""
    seen: list[int] = []
    own = threading.current_thread() is threading.main_thread()  # (signal handlers are the main thread's)
    if not own or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield seen
        return

    def handler(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt

    def unraisable(info, previous=sys.unraisablehook):
        if not (seen and isinstance(info.exc_value, KeyboardInterrupt)):
            previous(info)

    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    signal.signal(signal.SIGINT, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = hook


def main(argv: list[str] | None = None) -> int:
    args, script = None, argv is None  # script: run as the command (from Python, Ctrl-C stays the caller's)
    with noticed_interrupts() as seen:
        try:
            argv = sys.argv[1:] if argv is None else list(argv)
            quiet_libraries(progress=wants_progress(argv))  # before the parser's imports read the environment
            args = build_parser().parse_args(argv)
            if seen:  # a Ctrl-C during the imports that Python swallowed
                raise KeyboardInterrupt
            rc = run(args)
        except KeyboardInterrupt:  # Ctrl-C, also during the first second's imports (before `args` exists)
            # Exit status 130 = 128 + SIGINT (2), the shells' convention for a program stopped by Ctrl-C, so a
            # script running this can tell an interrupt from a failure (1) or a bad input (2).
            print(interrupted(args), file=sys.stderr)
            rc = 130
    if script:  # the work is over: a later Ctrl-C must not break the interpreter's shutdown into a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return rc


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; a ``ProbeError`` (and out of memory, a broken pipe, an I/O error) as one line."""
    try:
        from .common import check_out_clear
        from .parsing import stderr_is_terminal

        if hasattr(args, "no_progress"):
            if getattr(args, "progress", False) and args.no_progress:
                raise ProbeError("both --progress and --no-progress given", "pass one of them")
            args.no_progress = args.no_progress or not (getattr(args, "progress", False) or stderr_is_terminal())
        check_out_clear(args)
        return args.func(args)
    except ProbeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory — use a smaller --batch-size, --dtype float16, or a GPU", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as command-line tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as e:
        if getattr(e, "errno", None) is None:
            raise
        print(
            f"error: {e.strerror or e} ({getattr(e, 'filename', '') or 'I/O'}) — check the path, its "
            "permissions and the free disk space",
            file=sys.stderr,
        )
        return 2
