"""What the source itself must not hold, where Python would run it without a word."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def repeated_dict_keys(tree: ast.AST) -> list[tuple[int, object]]:
    """(line, key) of each constant key a dict literal writes a second time."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            seen: set[object] = set()
            for key in node.keys:
                if isinstance(key, ast.Constant):
                    if key.value in seen:
                        found.append((key.lineno, key.value))
                    seen.add(key.value)
    return found


def test_no_dict_literal_writes_a_key_twice() -> None:
    """The later entry silently wins: a label table with one key twice showed the dashboard's
    column head in place of the case page's re-check state."""
    repeated = {str(path.relative_to(ROOT)): found
                for package in ("detector", "serving", "training", "scripts", "tests")
                for path in sorted((ROOT / package).rglob("*.py"))
                if (found := repeated_dict_keys(ast.parse(path.read_text(encoding="utf-8"))))}
    assert repeated == {}


def test_the_check_finds_a_repeated_key() -> None:
    assert repeated_dict_keys(ast.parse('LABELS = {"a": 1, "b": 2, "a": 3}')) == [(1, "a")]
