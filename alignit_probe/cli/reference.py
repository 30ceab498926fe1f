"""The command-line reference, written from the parsers themselves: every command and subcommand, its usage, and
one table per argument group (flag, value, default, what it does). ``docs/cli.md`` is this output, and a test keeps
it so::

    python -m alignit_probe.cli.reference > docs/cli.md
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from . import build_parser
from .parsing import subcommands

WIDTH = 110  # usage lines wrap here, whatever the terminal
HEADER = """# Command-line reference

Generated from the parsers (`python -m alignit_probe.cli.reference > docs/cli.md`; a test checks that this file is
what they say). Every bad input is one line `error: problem — fix` and exit status 2; `--help` on any command prints
its own part of this page.
"""


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (command path, parser), depth first, in the order the parsers list their subcommands."""
    yield path, parser
    sub = subcommands(parser)
    for name, child in sub.choices.items() if sub is not None else []:
        yield from walk(child, (*path, name))


def usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(prog=parser.prog, width=WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def cell(text: object) -> str:
    """Text for one line of Markdown: ``<new1>`` shown, not taken for an HTML tag; ``|`` kept inside its cell."""
    text = " ".join(str(text).split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|")


def row(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """One argument as a table row: its flags (or name), the value it takes, its default, its help."""
    formatter = argparse.HelpFormatter(prog=parser.prog, width=WIDTH)
    names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
    value = ""
    if action.nargs != 0:
        value = (
            "{" + ",".join(map(str, action.choices)) + "}"
            if action.choices
            else formatter._metavar_formatter(action, action.dest.upper())(1)[0]
        )
        value = f"`{value}`" + (" …" if action.nargs in ("*", "+") else "")
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{default}`"
    text = formatter._expand_help(action) if action.help else ""
    return f"| {names} | {cell(value)} | {cell(shown)} | {cell(text)} |"


def section(path: tuple[str, ...], parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## `{' '.join(path)}`", ""]
    if parser.description:
        lines += [cell(parser.description), ""]
    lines += ["```text", usage(parser), "```", ""]
    sub = subcommands(parser)
    if sub is not None:
        helps = {a.dest: a.help for a in sub._choices_actions}
        lines += ["| command | what it does |", "| --- | --- |"]
        lines += [f"| `{' '.join((*path, name))}` | {cell(helps.get(name) or '')} |" for name in sub.choices]
        lines.append("")
    for group in parser._action_groups:
        actions = [
            a
            for a in group._group_actions
            if a.help != argparse.SUPPRESS and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
        ]
        if actions:
            lines += [
                f"**{group.title}**",
                "",
                "| argument | value | default | what it does |",
                "| --- | --- | --- | --- |",
            ]
            lines += [row(parser, a) for a in actions] + [""]
    return lines


def reference() -> str:
    """``docs/cli.md``: the header, then a section per command and subcommand."""
    lines = [HEADER]
    for path, parser in walk(build_parser(), ("alignit-probe",)):
        lines += section(path, parser)
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(reference(), end="")
