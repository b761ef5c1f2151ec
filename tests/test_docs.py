"""Every `gridwatch` command the README and the pages in docs/ show still exists: the
subcommand is there and each flag is one it takes. A command in a code block must parse as
written (UPPER-CASE placeholders stand for a value); a command named in the text is checked
for its subcommand and flags only. Syntax summaries (`[--since DATE]`, `a|b`, `x / y`) are
left out."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```[\w-]*\n(.*?)```", re.S)
SPAN = re.compile(r"`(gridwatch [^`]+)`")
SUMMARY = re.compile(r"[\[\]|<>{}]|\.\.\.|…| / ")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")


def command_lines(page: Path) -> list[tuple[str, bool]]:
    """(command, whether it stands in a code block) for each command the page shows."""
    text = page.read_text(encoding="utf-8")
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("gridwatch "):
                found.append((re.split(r"\s+#", line)[0].strip(), True))
    found += [(span, False) for span in SPAN.findall(FENCE.sub("", text))]
    return [(line, block) for line, block in found if not SUMMARY.search(line)]


def documented_commands() -> list[tuple[str, str, bool]]:
    return [(page.relative_to(ROOT).as_posix(), line, block)
            for page in PAGES for line, block in command_lines(page)]


def subcommand_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the deepest subcommand named at the start of argv."""
    for word in argv:
        choices = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if not choices or word not in choices:
            break
        parser = choices[word]
    return parser


def test_the_docs_show_commands() -> None:
    assert len(documented_commands()) >= 10


@pytest.mark.parametrize(("page", "line", "in_block"), documented_commands())
def test_documented_command_exists(page: str, line: str, in_block: bool) -> None:
    from serving.cli import build_parser

    argv = ["1" if PLACEHOLDER.match(word) else word for word in shlex.split(line)[1:]]
    parser = build_parser()
    if in_block:
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # argparse exits 2 on an unknown command, flag or value
            pytest.fail(f"{page}: `{line}` does not parse (exit {exc.code})")
        return
    command = subcommand_parser(parser, argv)
    assert command is not parser, f"{page}: `{line}` names no gridwatch command"
    unknown = [w.split("=")[0] for w in argv if w.startswith("--") and w.split("=")[0] not in command._option_string_actions]
    assert not unknown, f"{page}: `{line}`: {command.prog} takes no {', '.join(unknown)}"
