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


# Which extra brings a module a command imports late (pyproject.toml's optional dependencies).
EXTRA_OF = {"torch": "train", "torchvision": "train", "ultralytics": "train", "onnx": "train", "onnxslim": "train",
            "imagehash": "train", "PIL": "train", "matplotlib": "train", "ray": "cluster", "psycopg2": "cluster",
            "playwright": "dev", "selenium": "dev"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - what a command did not expect still gets one line
        problem = plain_problem(exc)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2


def plain_problem(exc: Exception) -> str | None:
    """One line for the errors that come from the caller's files, folders, database or
    installed extras rather than from a fault in gridwatch; None for anything else (its
    traceback is what a bug report needs)."""
    from sqlalchemy.exc import DatabaseError

    from detector.model import ModelLoadError

    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] in EXTRA_OF:
        return (f"this command needs {exc.name.split('.')[0]}, which is not installed: "
                f"pip install 'gridwatch[{EXTRA_OF[exc.name.split('.')[0]]}]'")
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); configs, labels and data.yaml must be"
    if isinstance(exc, DatabaseError):
        return f"the database cannot be read ({type(exc.orig or exc).__name__}: {exc.orig or exc})"
    if isinstance(exc, ModelLoadError):
        return str(exc)
    return None


if __name__ == "__main__":
    sys.exit(main())
