"""`gridwatch cluster status`: cameras per camera worker, from the leases in the case database,
and whether the serving process that holds them is still there (it renews them while it runs)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone

from serving.commands.store_args import add_store_arguments, open_database


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cluster", help="cluster mode: which worker runs which camera")
    sub = parser.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND", required=True)
    status = sub.add_parser("status", help="cameras per worker, with their nodes and fencing numbers",
                            description="Reads the camera leases `gridwatch serve --cluster` keeps in the case "
                            "database: each worker with its node, cameras and since when it holds them, cameras "
                            "no worker holds, and whether the serving process still renews the leases.")
    add_store_arguments(status)
    status.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    status.set_defaults(func=run_status)


def _age(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "never"
    seconds = max(0, int((now - then).total_seconds()))
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago" if seconds < 7200 \
        else f"{seconds // 3600} h ago"


def run_status(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from serving.cluster.leases import current, stale_after
    from serving.settings import SettingsError, load_settings

    try:
        db = open_database(args, "cluster status")
        if db is None:
            return 2
        try:
            rows = current(db)
        finally:
            db.close()
        settings = load_settings(args.config, data_dir=args.data_dir)
    except SQLAlchemyError as exc:  # the database is away: say so, no traceback
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0][:200]
        print(f"gridwatch cluster status: cannot read the camera leases, the database is away "
              f"({type(exc).__name__}: {reason})", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"gridwatch cluster status: {exc}", file=sys.stderr)
        return 2
    now = datetime.now(timezone.utc)
    stale_s = stale_after(settings.cluster_lease_timeout_s)
    workers: dict[str, dict] = {}
    unheld = []
    for row in rows:
        if row.worker is None:
            unheld.append(row.camera)
            continue
        entry = workers.setdefault(row.worker, {"worker": row.worker, "node": row.node, "cameras": [],
                                                "since": row.granted_at.isoformat(), "renewed_at": None})
        entry["cameras"].append({"camera": row.camera, "fencing": row.fencing,
                                 "since": row.granted_at.isoformat()})
        entry["since"] = min(entry["since"], row.granted_at.isoformat())
        if row.renewed_at is not None and (entry["renewed_at"] is None or
                                           row.renewed_at.isoformat() > entry["renewed_at"]):
            entry["renewed_at"] = row.renewed_at.isoformat()
    renewed = [datetime.fromisoformat(w["renewed_at"]) for w in workers.values() if w["renewed_at"]]
    last_renewal = max(renewed) if renewed else None
    # Held leases nobody renewed for three renewal intervals: the serving process is gone (or
    # cut off from the database); its cameras run nowhere until it comes back.
    gone = bool(workers) and (last_renewal is None or (now - last_renewal).total_seconds() > stale_s)
    if args.json:
        print(json.dumps({"workers": list(workers.values()), "unheld": unheld,
                          "service": "gone" if gone else "running" if workers else "none",
                          "renewed_at": last_renewal.isoformat() if last_renewal else None,
                          "stale_after_s": stale_s}))
        return 0
    if not rows:
        print("no camera leases: no cluster has run on this database", file=sys.stderr)
        return 0
    if gone:
        print(f"the serving process is gone: its leases were last renewed {_age(last_renewal, now)} "
              f"(stale after {stale_s:.0f} s); these cameras run nowhere until `gridwatch serve --cluster` "
              "runs again", file=sys.stderr)
    print(f"{'worker':<10} {'node':<14} {'cameras':>7}  {'since':<25} {'renewed':<12} ids")
    for w in workers.values():
        ids = ", ".join(f"{c['camera']}#{c['fencing']}" for c in w["cameras"])
        since = datetime.fromisoformat(w["since"]).isoformat(timespec="seconds")
        renewed_at = datetime.fromisoformat(w["renewed_at"]) if w["renewed_at"] else None
        print(f"{w['worker']:<10} {w['node']:<14} {len(w['cameras']):>7}  {since:<25} "
              f"{_age(renewed_at, now):<12} {ids}")
    if unheld:
        print(f"{'(none)':<10} {'':<14} {len(unheld):>7}  {'':<25} {'':<12} {', '.join(unheld)}")
    return 0
