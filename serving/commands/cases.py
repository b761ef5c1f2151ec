"""`gridwatch cases`: operator tools for the case outbox (replay dead letters, show the queue)."""

from __future__ import annotations

import argparse
import json
import sys

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
            if args.case_number is not None and not _case_exists(db, args.case_number):
                print(f"gridwatch cases: no case {args.case_number!r} in this database", file=sys.stderr)
                return 2
            n = replay(db, case_number=args.case_number, include_delivered=args.include_delivered)
            print(f"{n} message(s) queued again; a running `gridwatch serve` sends them on its next pass")
        else:
            print(json.dumps(outbox_stats(db)))
    finally:
        db.close()
    return 0


def _case_exists(db, case_number: str) -> bool:  # noqa: ANN001
    from serving.cases.listing import find_case

    with db.sessions() as session:
        return find_case(session, case_number) is not None
