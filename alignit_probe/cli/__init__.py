"""Command line: ``alignit-probe {record, compare, merge, alignit, swap, attention, report, demo, toy, world}``.

One module per command over ``common``; every command uses the public Python API (``Probe``, ``compare``,
``open_store`` …). Every bad input ends with one line ``error: <problem> — <fix>`` on stderr and exit status 2, no
traceback; library warnings (``ProbeWarning``) print as ``warning: …`` once each."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

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

    parser = argparse.ArgumentParser(prog="alignit-probe", description=__doc__.splitlines()[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        import_module(f".{name}", __name__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_libraries(progress="--no-progress" not in argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from .common import check_out_clear

        check_out_clear(args)
        return args.func(args)
    except ProbeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted — rerun the same command (record resumes where it stopped)", file=sys.stderr)
        return 130
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
