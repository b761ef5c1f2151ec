"""`gridwatch cases`: operator tools for the case outbox (replay dead letters, show the queue)."""

from __future__ import annotations

import argparse
import json

from serving.commands.store_args import add_store_arguments, open_database


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cases", help="case delivery tools: replay dead letters, queue status")
    sub = parser.add_subparsers(dest="cases_command", metavar="ACTION", required=True)
    for name, text in (("replay", "queue dead-lettered webhooks again (all, or one case's)"),
                       ("outbox", "print the outbox counts and delivery lag as JSON")):
        p = sub.add_parser(name, help=text)
        add_store_arguments(p)
        if name == "replay":
            p.add_argument("--case", dest="case_number", help="only this case number")
            p.add_argument("--include-delivered", action="store_true",
                           help="also resend delivered versions (same idempotency keys)")
        p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serving.delivery import outbox_stats, replay

    db = open_database(args, "cases")
    if db is None:
        return 2
    try:
        if args.cases_command == "replay":
            n = replay(db, case_number=args.case_number, include_delivered=args.include_delivered)
            print(f"{n} message(s) queued again; a running `gridwatch serve` sends them on its next pass")
        else:
            print(json.dumps(outbox_stats(db)))
    finally:
        db.close()
    return 0
