"""What the commands that work on a service's database share: finding it the way
`gridwatch serve` does (--config, --data-dir, settings), and opening it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.store.db import Database


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="the same YAML `gridwatch serve` runs with")
    parser.add_argument("--data-dir", type=Path, help="data directory (default ./gridwatch-data)")


def open_database(args: argparse.Namespace, command: str, *, create: bool = False) -> Database | None:
    """The service's database (migrated), or None after printing why it cannot be opened.
    A default SQLite file that is not there yet is made only with `create` (adding a user
    before the first start): a command that reads would make an empty one at a mistyped
    --data-dir and report nothing there."""
    from serving.settings import SettingsError, load_settings
    from serving.store.db import Database

    try:
        settings = load_settings(args.config, data_dir=args.data_dir)
        if settings.database_file is not None and not create and not settings.database_file.exists():
            print(f"gridwatch {command}: no gridwatch database at {settings.database_file}: give the --data-dir (or "
                  "--config) `gridwatch serve` runs with", file=sys.stderr)
            return None
        return Database(settings.resolved_database_url)
    except (SettingsError, OSError, ValueError) as exc:
        print(f"gridwatch {command}: {exc}", file=sys.stderr)
        return None
