"""`gridwatch`: one command, one subcommand per job.

Each command module exposes `add_parser(subparsers)` and sets `func` on its parser;
modules import their heavy dependencies inside `func`, so `gridwatch --help` stays fast
and never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "serving.commands.detect",
    "serving.commands.bench",
    "serving.commands.watch",
    "serving.commands.serve",
    "serving.commands.cluster",
    "serving.commands.cases",
    "serving.commands.users",
    "serving.commands.review",
    "serving.commands.evidence",
    "training.commands",
    "training.data_commands",
    "training.model_commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridwatch", description="Street-violation detection for city grid case systems."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
