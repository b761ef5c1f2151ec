"""`gridwatch cluster status`: cameras per camera worker, from the leases in the case database."""

from __future__ import annotations

import argparse
import json
import sys

from serving.commands.store_args import add_store_arguments, open_database


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cluster", help="cluster mode: which worker runs which camera")
    sub = parser.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND", required=True)
    status = sub.add_parser("status", help="cameras per worker, with their nodes and fencing numbers",
                            description="Reads the camera leases `gridwatch serve --cluster` keeps in the case "
                            "database: each worker with its node and cameras, and cameras no worker holds.")
    add_store_arguments(status)
    status.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    status.set_defaults(func=run_status)


def run_status(args: argparse.Namespace) -> int:
    from serving.cluster.leases import current

    db = open_database(args, "cluster status")
    if db is None:
        return 2
    try:
        rows = current(db)
    finally:
        db.close()
    workers: dict[str, dict] = {}
    unheld = []
    for row in rows:
        if row.worker is None:
            unheld.append(row.camera)
            continue
        entry = workers.setdefault(row.worker, {"worker": row.worker, "node": row.node, "cameras": []})
        entry["cameras"].append({"camera": row.camera, "fencing": row.fencing,
                                 "since": row.granted_at.isoformat()})
    if args.json:
        print(json.dumps({"workers": list(workers.values()), "unheld": unheld}))
        return 0
    if not rows:
        print("no camera leases: no cluster has run on this database", file=sys.stderr)
        return 0
    print(f"{'worker':<10} {'node':<14} {'cameras':>7}  ids")
    for w in workers.values():
        ids = ", ".join(f"{c['camera']}#{c['fencing']}" for c in w["cameras"])
        print(f"{w['worker']:<10} {w['node']:<14} {len(w['cameras']):>7}  {ids}")
    if unheld:
        print(f"{'(none)':<10} {'':<14} {len(unheld):>7}  {', '.join(unheld)}")
    return 0
