"""`gridwatch users`: the people who sign in to the review page."""

from __future__ import annotations

import argparse
import json
import sys

from serving.commands.store_args import add_store_arguments, open_database


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("users", help="review-page accounts: add, list, disable")
    sub = parser.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a user; the password is read from standard input")
    add.add_argument("name")
    add.add_argument("--role", choices=("reviewer", "admin"), required=True)
    add.add_argument("--password-stdin", action="store_true", required=True,
                     help="read the password from the first line of standard input (never from the command line)")
    sub.add_parser("list", help="print the users as JSON lines")
    disable = sub.add_parser("disable", help="stop a user signing in; their sessions end")
    disable.add_argument("name")
    for p in sub.choices.values():
        add_store_arguments(p)
        p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serving.accounts import AccountError, add_user, disable_user, list_users

    db = open_database(args, "users", create=args.users_command == "add")
    if db is None:
        return 2
    actor = "cli"
    try:
        if args.users_command == "add":
            account = add_user(db, args.name, args.role, sys.stdin.readline().rstrip("\r\n"), actor=actor)
            print(f"user {account.name} added ({account.role})")
        elif args.users_command == "disable":
            print(f"user {disable_user(db, args.name, actor=actor).name} disabled")
        else:
            for account in list_users(db):
                print(json.dumps({"name": account.name, "role": account.role, "disabled": account.disabled,
                                  "created_at": account.created_at.isoformat()}))
    except AccountError as exc:
        print(f"gridwatch users: {exc}", file=sys.stderr)
        return 1
    finally:
        db.close()
    return 0
