"""The argument parser of every command and subcommand: a bad flag, a bad value or a missing argument ends, as every
other bad input does, in one line ``error: <prog>: <problem> — <fix>`` and exit status 2 (no usage dump, the
command named, a close flag or value suggested where ``difflib`` finds one). ``--help`` is argparse's own."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable, Iterator, Sequence

HELP = "see {prog} --help"


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` with one-line errors. Subparsers inherit the class (``add_subparsers`` makes parsers of
    the parent's type), so the top-level parser alone need be one for ``toy build``, ``world train`` … to be too."""

    given: list[str] = []  # the arguments being parsed (a missing required one may hide a mistyped flag)

    def error(self, message: str) -> None:  # type: ignore[override]  (argparse's contract: it exits)
        problem, fix = explain(self, message)
        unknown = [x for x in Parser.given if x.startswith("--") and x.split("=", 1)[0] not in options(self)]
        if message.startswith("the following arguments are required") and unknown and subcommands(self) is None:
            problem, fix = f"{message}; unrecognized: {' '.join(unknown)}", unrecognized_fix(self, unknown, self)
        self.exit(2, f"error: {self.prog}: {problem} — {fix}\n")

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """Extra arguments are said by the (sub)command that was given them, not by the top-level parser."""
        Parser.given = list(sys.argv[1:] if args is None else args)
        known, extras = self.parse_known_args(args, namespace)
        if extras:
            target = chosen(self, known)
            fix = unrecognized_fix(target, extras, self)
            target.exit(2, f"error: {target.prog}: unrecognized arguments: {' '.join(extras)} — {fix}\n")
        return known


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost (sub)command parser that ``args`` went through (``alignit-probe world train`` → its own)."""
    while (sub := subcommands(parser)) is not None and getattr(args, sub.dest, None) in sub.choices:
        parser = sub.choices[getattr(args, sub.dest)]
    return parser


def options(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def close_flags(flag: str, candidates: Sequence[str]) -> list[str]:
    """Flags ``flag`` may have meant: those it abbreviates (abbreviations are refused), else close spellings."""
    name = flag.split("=", 1)[0]
    if len(name) > 3:
        longer = [c for c in candidates if c.startswith(name)]
        if longer:
            return longer[:3]
    return difflib.get_close_matches(name, candidates, n=1, cutoff=0.8)


def explain(parser: argparse.ArgumentParser, message: str) -> tuple[str, str]:
    """argparse's ``message`` as (problem, fix)."""
    see = HELP.format(prog=parser.prog)
    sub = subcommands(parser)
    if sub is not None and message == f"the following arguments are required: {sub.metavar or sub.dest}":
        return "no command given", f"pass one of: {', '.join(sub.choices)} ({parser.prog} --help says what each does)"
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
    if choice:
        given, allowed = choice.group(1), re.findall(r"'([^']*)'", choice.group(2))
        close = [a for a in allowed if a and given.lower().startswith(a)]  # "middle" → "mid"
        close = close or difflib.get_close_matches(given, allowed, n=1, cutoff=0.75)
        if close:
            return message, f"did you mean {close[0]!r}? ({see})"
    return message, see


def unrecognized_fix(parser: argparse.ArgumentParser, extras: Iterable[str], top: argparse.ArgumentParser) -> str:
    """Close flags of ``parser`` for the unknown ones, else the commands of ``top`` that have such a flag."""
    see = HELP.format(prog=parser.prog)
    flags = [x for x in extras if x.startswith("--") and len(x) > 2]
    meant = {f: m for f in flags if (m := close_flags(f, options(parser)))}
    if len(meant) == 1:
        return f"did you mean {' or '.join(next(iter(meant.values())))}? ({see})"
    if meant:
        return "did you mean " + ", ".join(f"{' or '.join(m)} (for {f})" for f, m in meant.items()) + f"? ({see})"
    sub = subcommands(top)
    if len(flags) == 1 and sub is not None:  # a flag of another command (``compare --layers``): say whose it is
        flag = flags[0].split("=", 1)[0]
        owners: dict[str, list[str]] = {}
        for name, p in sub.choices.items():
            for other in close_flags(flag, options(p)) if p is not parser else ():
                owners.setdefault(other, []).append(name)
        if owners:
            where = "; ".join(f"{other} is an option of {', '.join(names)}" for other, names in owners.items())
            return f"{parser.prog.split()[-1]} has no {flag} ({where}; {see})"
    return see


def all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    sub = subcommands(parser)
    for p in sub.choices.values() if sub is not None else ():
        yield from all_parsers(p)


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """``--progress`` next to every ``--no-progress``: bars are off where stderr is not a terminal unless asked."""
    for p in all_parsers(parser):
        for group in p._action_groups:
            off = next((a for a in group._group_actions if a.dest == "no_progress"), None)
            if off is None:
                continue
            on = group.add_argument(
                "--progress",
                action="store_true",
                help="progress bars even when stderr is not a terminal (a log file, CI), where they are off",
            )
            for actions in (p._actions, group._group_actions):  # listed right after --no-progress
                actions.remove(on)
                actions.insert(actions.index(off) + 1, on)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
