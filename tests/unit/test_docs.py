"""The documentation says what the code does: ``docs/cli.md`` is what the parsers print (every command, subcommand
and flag), README stays a front door (≤ 200 lines, its two commands, links into ``docs/``), and every relative link
of README, ``docs/`` and the folders' READMEs points at a file that exists (and, with ``#anchor``, a heading)."""

import re
from pathlib import Path

import pytest

from alignit_probe.cli import COMMANDS, build_parser
from alignit_probe.cli.parsing import subcommands
from alignit_probe.cli.reference import reference

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "analyses/README.md"]
PAGES.append(ROOT / "notebooks/README.md")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_cli_reference_is_generated_from_the_parsers():
    assert (ROOT / "docs/cli.md").read_text() == reference(), (
        "docs/cli.md is out of date: python -m alignit_probe.cli.reference > docs/cli.md"
    )


def test_cli_reference_names_every_command_and_flag():
    page = reference()
    parser = build_parser()
    for name in COMMANDS:
        assert f"## `alignit-probe {name}`" in page, name
        sub = subcommands(parser).choices[name]
        flags = [s for a in sub._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
        assert flags or subcommands(sub) is not None, name
        for flag in flags:
            assert f"`{flag}`" in page, (name, flag)
    assert "`alignit-probe world train`" in page and "`alignit-probe toy build`" in page


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    ci = (ROOT / ".ci/run").read_text()
    test_command = next(ln.strip() for ln in ci.splitlines() if ln.startswith("python3 -m venv"))
    assert test_command in text  # CI runs README's test command, verbatim
    assert "alignit-probe demo" in text and text.count("```python") == 1
    linked = {m.split("#")[0] for m in LINK.findall(text)}
    assert {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} <= linked  # every page reachable


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: {target}"
        if anchor:
            assert anchor in anchors(dest), f"{page.name}: {target}"
