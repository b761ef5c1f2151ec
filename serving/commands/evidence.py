"""`gridwatch evidence`: the instance's public key, checking the evidence chain and bundles,
and writing a case bundle, all with the service's own settings (--config, --data-dir)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.commands.store_args import add_store_arguments


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evidence", help="evidence chain: public key, verify, case bundles")
    sub = parser.add_subparsers(dest="evidence_command", metavar="ACTION", required=True)
    key = sub.add_parser("key", help="print the instance's public key (PEM) and its fingerprint")
    add_store_arguments(key)
    check = sub.add_parser("verify", help="recompute every evidence hash, the chain and its signatures; "
                                          "exit 1 naming each case that does not match")
    add_store_arguments(check)
    check.add_argument("cases", nargs="*", metavar="CASE", help="only these cases (the chain is checked whole)")
    check.add_argument("--bundle", type=Path, metavar="F.zip", help="check a case bundle instead")
    bundle = sub.add_parser("bundle", help="write a case's evidence bundle (zip)")
    add_store_arguments(bundle)
    bundle.add_argument("case", metavar="CASE")
    bundle.add_argument("--out", type=Path, required=True, metavar="F.zip")
    bundle.add_argument("--originals", action="store_true",
                        help="include sealed (unmasked) originals: for a court, not for the case system")
    for p in (key, check, bundle):
        p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serving.chain import ChainError, fingerprint, load_key, public_pem
    from serving.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.config, data_dir=args.data_dir)
    except SettingsError as exc:
        print(f"gridwatch evidence: {exc}", file=sys.stderr)
        return 2
    key_file = settings.resolved_evidence_key
    key = None
    if key_file.exists():
        try:
            key = load_key(key_file)
        except ChainError as exc:
            print(f"gridwatch evidence: {exc}", file=sys.stderr)
            return 2
    if args.evidence_command == "verify" and args.bundle is not None:
        return _verify_bundle(args.bundle, key.public_key() if key is not None else None)
    if key is None:
        print(f"gridwatch evidence: no signing key at {key_file}; `gridwatch serve` makes it on first start",
              file=sys.stderr)
        return 2
    if args.evidence_command == "key":
        sys.stdout.write(public_pem(key).decode("ascii"))
        print(f"fingerprint (sha256 of the DER public key): {fingerprint(key)}")
        return 0
    from serving.commands.store_args import open_database

    db = open_database(args, "evidence")
    if db is None:
        return 2
    try:
        if args.evidence_command == "verify":
            return _verify(db, settings, key, args.cases)
        return _bundle(db, settings, key, args.case, args.out, args.originals)
    finally:
        db.close()


def _verify(db, settings, key, cases: list[str]) -> int:  # noqa: ANN001
    from serving.chain import MIRROR_NAME, verify

    report = verify(db, settings.resolved_evidence_dir, key.public_key(), mirror=settings.data_dir / MIRROR_NAME)
    failed = report.failed(cases)
    known = _chained_cases(db)
    for number in cases:
        if number not in known and number not in failed:
            failed[number] = ["not in the evidence chain"]
    for line in report.removed:
        print(f"removed: {line}")
    for line in report.general:
        print(f"FAIL: {line}")
    for number, problems in sorted(failed.items()):
        for problem in problems:
            print(f"FAIL {number}: {problem}")
    print(f"{report.entries} chain entries, {report.files} evidence files, {report.heads} signed heads checked; "
          f"{len(failed)} case(s) do not match")
    return 1 if failed or report.general else 0


def _chained_cases(db) -> set[str]:  # noqa: ANN001
    from sqlalchemy import select

    from serving.store.models import ChainEntry

    with db.sessions() as session:
        return set(session.scalars(select(ChainEntry.case_number).distinct()))


def _bundle(db, settings, key, case_number: str, out: Path, originals: bool) -> int:  # noqa: ANN001
    from serving.bundle import BundleError, build_bundle
    from serving.cases.listing import find_case
    from serving.cases.public import CasePublic
    from serving.chain import ChainSigner
    from serving.cases.service import stored_instance

    with db.sessions() as session:
        case = find_case(session, case_number)
        if case is None:
            print(f"gridwatch evidence: no case {case_number!r}", file=sys.stderr)
            return 1
        public = CasePublic.of(case, (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/"))
    signer = ChainSigner(db, key, settings.instance_id or stored_instance(db), timestamp_url=settings.timestamp_url)
    try:
        data = build_bundle(db, settings.resolved_evidence_dir, signer, case_number,
                            public.model_dump(mode="json"), originals=originals)
    except BundleError as exc:
        print(f"gridwatch evidence: {exc}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with out.open("xb") as written:  # exclusive: a bundle never replaces a file (the database, the key)
            written.write(data)
    except FileExistsError:
        print(f"gridwatch evidence: {out} exists; a bundle is written to a new file, never over one: "
              "remove it or name another --out", file=sys.stderr)
        return 1
    print(f"{out}: {len(data)} bytes")
    return 0


def _verify_bundle(path: Path, key) -> int:  # noqa: ANN001
    from serving.bundle import check_bundle

    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"gridwatch evidence: {exc}", file=sys.stderr)
        return 2
    report = check_bundle(data, key)
    name = report.case_number or path.name
    for problem in report.problems:
        print(f"FAIL {name}: {problem}")
    if report.ok:
        print(f"{name}: bundle intact: {report.files} evidence files, {report.entries} chain entries up to a "
              f"valid signed head ({report.sealed} sealed original(s), {report.removed} removed by retention)")
    return 0 if report.ok else 1
