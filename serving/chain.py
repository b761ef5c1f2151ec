"""The evidence chain: every stored evidence item and every case decision, in one append-only
hash chain that nobody can rewrite quietly.

Each entry is a short text (`entry_text`) holding its position, time, case, kind, the item's
SHA-256, where the file lies, a JSON detail and the hash of the entry before it; the entry's
hash is the SHA-256 of that text, so anyone with `sha256sum` can walk the chain. Entries are
rows of `evidence_chain`, written in the transaction that stores the item or the decision,
and mirrored, once that transaction commits, to `evidence-chain.jsonl` beside the evidence: changing
history means rewriting the database, the file and every later entry, and the heads signed
with the instance's Ed25519 key (optionally time-stamped, RFC 3161) still give it away.

`verify` recomputes all of it: every entry's hash and link, the mirror, each signed head, and
every evidence file's hash, and names each case whose evidence or history does not match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from detector.files import sha256_file
from serving.store.db import Database
from serving.store.models import ChainEntry, ChainHead, Evidence

log = logging.getLogger("gridwatch.chain")

GENESIS = "0" * 64
ENTRY_MAGIC = "gridwatch-chain-entry-v1"
HEAD_MAGIC = "gridwatch-chain-head-v1"
# In the data dir, beside the evidence folder (not in it: that holds evidence files alone).
MIRROR_NAME = "evidence-chain.jsonl"
KEY_NAME = "evidence-signing.key"
# Entry kinds that are not files: a reviewer's or the case system's decision, a re-check's
# outcome, and a retention purge's record of what it removed.
DECISION_KINDS = ("decision", "status", "recheck")
TOMBSTONE = "tombstone"
_PG_CHAIN_LOCK = 0x67726964  # one appender at a time across processes sharing a PostgreSQL


class ChainError(ValueError):
    """The chain cannot be read or signed (no key, a malformed head or token)."""


def canonical(value: Any) -> str:
    return json.dumps(value if value is not None else {}, ensure_ascii=False, sort_keys=True,
                      separators=(",", ":"), default=str)


def entry_text(seq: int, at: str, case_number: str, kind: str, sha256: str, path: str, detail: str,
               prev: str) -> bytes:
    """The bytes an entry's hash is taken over: one `name: value` a line, readable by a person."""
    lines = [ENTRY_MAGIC, f"seq: {seq}", f"at: {at}", f"case: {case_number}", f"kind: {kind}",
             f"sha256: {sha256}", f"path: {path}", f"detail: {detail}", f"prev: {prev}"]
    return ("\n".join(lines) + "\n").encode("utf-8")


def text_of(row: ChainEntry) -> bytes:
    return entry_text(row.seq, row.at, row.case_number, row.kind, row.sha256, row.path, row.detail, row.prev_hash)


def parse_text(data: bytes) -> dict[str, str]:
    """An entry's or head's text as its fields (the first line names the format)."""
    lines = data.decode("utf-8").rstrip("\n").split("\n")
    fields = {"format": lines[0]}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        fields[name] = value
    return fields


# -- appending -----------------------------------------------------------------------------
class EvidenceChain:
    """Appends entries inside the transaction that stores an item or records a decision, and
    mirrors them once it commits. `install(db)` hooks it to the database's sessions: every new
    evidence row, every audited action on a case and every change of a case's status is
    chained at flush, wherever in the case stage it was made, before any webhook body (which
    names each item's chain position) is written."""

    def __init__(self, mirror: Path) -> None:
        self.mirror = Path(mirror)
        self._file_lock = threading.Lock()
        # Held from a transaction's first entry until it ends: two transactions of this process
        # (an ingest, an admin's audited read) never draw the same position.
        self._append_lock = threading.RLock()

    def install(self, db: Database) -> None:
        event.listen(db.sessions, "before_flush", self._before_flush)
        event.listen(db.sessions, "after_commit", self._after_commit)
        event.listen(db.sessions, "after_transaction_end", self._after_transaction_end)

    def append(self, session: Session, case_number: str, kind: str, sha256: str, *, path: str = "",
               detail: dict[str, Any] | None = None, at: datetime | None = None) -> ChainEntry:
        """One entry after the newest; flushed by the caller's flush (or commit)."""
        case_number = case_number[:32]
        last = session.info.get("chain_last")
        if last is None:
            if not session.info.get("chain_locked"):
                self._append_lock.acquire()
                session.info["chain_locked"] = True
            if session.bind.dialect.name == "postgresql":
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_CHAIN_LOCK})
            row = session.execute(select(ChainEntry.seq, ChainEntry.entry_hash)
                                  .order_by(ChainEntry.seq.desc()).limit(1)).first()
            last = (row[0], row[1]) if row is not None else (0, GENESIS)
        seq, prev = last[0] + 1, last[1]
        stamp = (at or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="microseconds")
        body = canonical(detail)
        entry = ChainEntry(seq=seq, at=stamp, case_number=case_number, kind=kind, sha256=sha256, path=path,
                           detail=body, prev_hash=prev,
                           entry_hash=hashlib.sha256(entry_text(seq, stamp, case_number, kind, sha256, path,
                                                                body, prev)).hexdigest())
        session.add(entry)
        session.info["chain_last"] = (seq, entry.entry_hash)
        session.info.setdefault("chain_pending", []).append(mirror_line(entry))
        return entry

    def _before_flush(self, session: Session, _context: Any, _instances: Any) -> None:
        from sqlalchemy import inspect as sa_inspect

        from serving.store.models import AuditEntry, Case

        for obj in list(session.new):
            if isinstance(obj, Evidence) and obj.chain_seq is None and obj.case is not None:
                detail = {}
                if obj.masks:  # a masked copy names the sealed original it came from
                    detail = {"of": self._seq_of(session, obj.case.case_number, obj.masks), "of_sha256": obj.masks}
                if obj.kind.startswith("moment"):  # a timeline frame: which moment of the event, seen when
                    detail = {**detail, "moment": obj.moment,
                              "seen_at": obj.seen_at.isoformat() if obj.seen_at else None}
                entry = self.append(session, obj.case.case_number, obj.kind, obj.sha256, path=obj.path,
                                    detail=detail)
                obj.chain_seq = entry.seq
            elif isinstance(obj, AuditEntry) and obj.target.startswith("case:"):
                detail = {"action": obj.action, "actor": obj.actor, "after": obj.after}
                self.append(session, obj.target[len("case:"):], "decision",
                            hashlib.sha256(canonical(detail).encode("utf-8")).hexdigest(), detail=detail)
        for obj in list(session.dirty):
            if isinstance(obj, Case):
                history = sa_inspect(obj).attrs.status.history
                if history.added and history.deleted and history.added[0] != history.deleted[0]:
                    detail = {"status": obj.status, "from": history.deleted[0], "external_id": obj.external_id}
                    self.append(session, obj.case_number, "status",
                                hashlib.sha256(canonical(detail).encode("utf-8")).hexdigest(), detail=detail)

    @staticmethod
    def _seq_of(session: Session, case_number: str, sha256: str) -> int | None:
        for obj in session.new:
            if isinstance(obj, ChainEntry) and obj.case_number == case_number and obj.sha256 == sha256:
                return obj.seq
        return session.scalar(select(ChainEntry.seq).where(ChainEntry.case_number == case_number,
                                                           ChainEntry.sha256 == sha256).limit(1))

    def _after_commit(self, session: Session) -> None:
        lines = session.info.pop("chain_pending", [])
        try:
            self._write_lines(lines)
        except OSError:
            # The database has them; the next start (sync_mirror) writes them out.
            log.exception("chain mirror %s not written; it is caught up at the next start", self.mirror)

    def _after_transaction_end(self, session: Session, transaction: Any) -> None:
        if transaction.parent is not None:
            return  # a savepoint: the outer transaction goes on
        session.info.pop("chain_last", None)
        session.info.pop("chain_pending", None)  # not committed: never mirrored
        if session.info.pop("chain_locked", False):
            self._append_lock.release()

    def _write_lines(self, lines: list[str]) -> None:
        if not lines:
            return
        with self._file_lock:
            self.mirror.parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND: lines are added at the end, never written over.
            fd = os.open(self.mirror, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, "".join(lines).encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)

    def sync_mirror(self, db: Database) -> int:
        """At start-up: entries the database has and the file lacks at its end (a crash between
        commit and write) are appended; returns how many."""
        have = {entry["seq"] for entry in read_mirror(self.mirror)}
        with db.sessions() as session:
            newest = max((s for s in have if s is not None), default=0)
            missing = session.scalars(select(ChainEntry).where(ChainEntry.seq > newest).order_by(ChainEntry.seq)).all()
        self._write_lines([mirror_line(row) for row in missing])
        return len(missing)


def mirror_line(row: ChainEntry) -> str:
    return canonical({"seq": row.seq, "hash": row.entry_hash, "entry": text_of(row).decode("utf-8")}) + "\n"


def read_mirror(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entry["seq"] = int(entry["seq"])
        except (ValueError, KeyError, TypeError):
            entry = {"seq": None, "line": number, "hash": "", "entry": line}
        entries.append(entry)
    return entries


def enrol_unchained(db: Database, chain: EvidenceChain) -> int:
    """Evidence stored before the chain existed joins it once, at the first start with it
    (the detail says so): from then on it is held like the rest."""
    with db.transaction() as session:
        rows = session.scalars(select(Evidence).where(Evidence.chain_seq.is_(None)).order_by(Evidence.id)).all()
        for item in rows:
            entry = chain.append(session, item.case.case_number, item.kind, item.sha256, path=item.path,
                                 detail={"enrolled": True, "stored_at": item.created_at.isoformat()})
            item.chain_seq = entry.seq
        return len(rows)


# -- the instance key and signed heads --------------------------------------------------------
def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The instance's Ed25519 key: made on first start, readable only by the service user."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return load_key(path)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return key
    return load_key(path)


def load_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ChainError(f"{path}: cannot read the evidence signing key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ChainError(f"{path}: not an Ed25519 key")
    return key


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """SHA-256 of the public key's DER: what a city writes down to recognise this instance."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(public.public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def head_text(instance: str, seq: int, entry_hash: str, at: datetime) -> bytes:
    lines = [HEAD_MAGIC, f"instance: {instance}", f"seq: {seq}", f"hash: {entry_hash}",
             f"at: {at.astimezone(timezone.utc).isoformat(timespec='seconds')}"]
    return ("\n".join(lines) + "\n").encode("utf-8")


class ChainSigner:
    """Signs the chain head (at an interval, at shutdown, and for a bundle that needs one)."""

    def __init__(self, db: Database, key: Ed25519PrivateKey, instance: str, *,
                 timestamp_url: str | None = None, timeout_s: float = 10.0) -> None:
        self.db = db
        self.key = key
        self.instance = instance
        self.timestamp_url = timestamp_url
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self.signed = 0
        self.timestamp_failures = 0

    def sign_head(self) -> ChainHead | None:
        """A signed head for the newest entry, unless one exists; None while the chain is empty."""
        with self._lock:
            with self.db.sessions() as session:
                last = session.scalars(select(ChainEntry).order_by(ChainEntry.seq.desc()).limit(1)).first()
                if last is None:
                    return None
                done = session.scalars(select(ChainHead).where(ChainHead.seq == last.seq)
                                       .order_by(ChainHead.id.desc()).limit(1)).first()
                if done is not None:
                    return done
                seq, entry_hash = last.seq, last.entry_hash
            now = datetime.now(timezone.utc)
            data = head_text(self.instance, seq, entry_hash, now)
            token = self._timestamp(data) if self.timestamp_url else None
            head = ChainHead(seq=seq, entry_hash=entry_hash, text=data.decode("utf-8"),
                             signature=self.key.sign(data).hex(), timestamp_token=token, signed_at=now)
            with self.db.transaction() as session:
                session.add(head)
            self.signed += 1
            return head

    def _timestamp(self, data: bytes) -> bytes | None:
        """The TSA's answer over the head text, or None (logged, counted) when it gives none:
        the signature stands without it, and the next head asks again."""
        try:
            return request_timestamp(self.timestamp_url, hashlib.sha256(data).digest(), self.timeout_s)
        except (OSError, ChainError) as exc:
            self.timestamp_failures += 1
            log.warning("time-stamping authority %s: %s", self.timestamp_url, exc)
            return None


def covering_head(session: Session, seq: int) -> ChainHead | None:
    """The first signed head at or after entry `seq`: the shortest stretch of chain proving it."""
    return session.scalars(select(ChainHead).where(ChainHead.seq >= seq)
                           .order_by(ChainHead.seq, ChainHead.id).limit(1)).first()


# -- RFC 3161 time-stamps ---------------------------------------------------------------------
def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + body


def timestamp_query(digest: bytes, nonce: int) -> bytes:
    """A DER TimeStampReq (RFC 3161 section 2.4.1) for a SHA-256 digest, asking for the TSA's certificate."""
    sha256_oid = bytes.fromhex("0609608648016503040201")
    algorithm = _der(0x30, sha256_oid + b"\x05\x00")
    imprint = _der(0x30, algorithm + _der(0x04, digest))
    nonce_bytes = nonce.to_bytes((nonce.bit_length() + 8) // 8, "big")
    return _der(0x30, _der(0x02, b"\x01") + imprint + _der(0x02, nonce_bytes) + _der(0x01, b"\xff"))


def _read_tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of body, end of body) of the DER element at `at`."""
    if at + 2 > len(data):
        raise ChainError("time-stamp response is truncated")
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[at:at + count], "big")
        at += count
    if at + length > len(data):
        raise ChainError("time-stamp response is truncated")
    return tag, at, at + length


def timestamp_status(response: bytes) -> int:
    """PKIStatus of a TimeStampResp: 0 granted, 1 granted with modifications, else refused."""
    tag, start, _ = _read_tlv(response, 0)
    if tag != 0x30:
        raise ChainError("time-stamp response is not a DER sequence")
    tag, start, _ = _read_tlv(response, start)  # PKIStatusInfo
    if tag != 0x30:
        raise ChainError("time-stamp response has no status")
    tag, start, end = _read_tlv(response, start)
    if tag != 0x02:
        raise ChainError("time-stamp response status is not an integer")
    return int.from_bytes(response[start:end], "big")


def request_timestamp(url: str, digest: bytes, timeout_s: float = 10.0) -> bytes:
    query = timestamp_query(digest, int.from_bytes(os.urandom(8), "big"))
    request = urllib.request.Request(url, data=query, method="POST",
                                     headers={"Content-Type": "application/timestamp-query"})
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 - the operator's URL
        response = answer.read(1 << 20)
    status = timestamp_status(response)
    if status not in (0, 1):
        raise ChainError(f"time-stamp refused (status {status})")
    if digest not in response:
        raise ChainError("time-stamp token does not carry the head's digest")
    return response


# -- verification ------------------------------------------------------------------------------
@dataclass
class ChainReport:
    """What `verify` found: problems per case, problems of no one case, and what was purged."""

    entries: int = 0
    files: int = 0
    heads: int = 0
    cases: dict[str, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # tombstones: what, when, by which rule

    def problem(self, case_number: str | None, message: str) -> None:
        if case_number:
            self.cases.setdefault(case_number, []).append(message)
        else:
            self.general.append(message)

    def failed(self, only: Iterable[str] | None = None) -> dict[str, list[str]]:
        wanted = set(only) if only else None
        return {c: p for c, p in self.cases.items() if wanted is None or c in wanted}

    @property
    def ok(self) -> bool:
        return not self.cases and not self.general


def _check_links(rows: list[ChainEntry], report: ChainReport) -> dict[int, ChainEntry]:
    by_seq: dict[int, ChainEntry] = {}
    prev_hash, prev_case, expected = GENESIS, None, 1
    for row in rows:
        by_seq[row.seq] = row
        if hashlib.sha256(text_of(row)).hexdigest() != row.entry_hash:
            report.problem(row.case_number, f"chain entry {row.seq} ({row.kind}) was changed after it was written")
        if row.seq != expected:
            report.problem(row.case_number, f"chain entries {expected}..{row.seq - 1} before entry {row.seq} are missing")
        if row.prev_hash != prev_hash:
            report.problem(row.case_number, f"chain entry {row.seq} does not follow the entry before it "
                                            "(entries reordered or removed)")
            if prev_case and prev_case != row.case_number:
                report.problem(prev_case, f"chain entry after {row.seq - 1} does not link to it "
                                          "(entries reordered or removed)")
        prev_hash, prev_case, expected = row.entry_hash, row.case_number, row.seq + 1
    return by_seq


def _check_mirror(by_seq: dict[int, ChainEntry], mirror: Path, report: ChainReport) -> None:
    if not mirror.is_file():
        if by_seq:
            report.problem(None, f"the chain's mirror file {mirror} is missing")
        return
    mirrored: dict[int, dict[str, Any]] = {}
    for entry in read_mirror(mirror):
        if entry["seq"] is None:
            report.problem(None, f"{mirror} line {entry['line']} is not a chain entry")
            continue
        mirrored[entry["seq"]] = entry
        fields = parse_text(entry.get("entry", "").encode("utf-8"))
        row = by_seq.get(entry["seq"])
        if row is None:
            report.problem(fields.get("case") or None,
                           f"chain entry {entry['seq']} ({fields.get('kind', '?')}) is in the mirror file "
                           "but was removed from the database")
        elif row.entry_hash != entry.get("hash") or text_of(row).decode("utf-8") != entry.get("entry"):
            report.problem(row.case_number, f"chain entry {row.seq} differs from its mirror in {mirror.name}")
    for seq, row in by_seq.items():
        if seq not in mirrored:
            report.problem(row.case_number, f"chain entry {seq} is missing from the mirror file {mirror.name}")


def _check_heads(session: Session, public: Ed25519PublicKey, by_seq: dict[int, ChainEntry],
                 report: ChainReport) -> None:
    heads = session.scalars(select(ChainHead).order_by(ChainHead.seq, ChainHead.id)).all()
    report.heads = len(heads)
    covered_from = 1
    for head in heads:
        data = head.text.encode("utf-8")
        fields = parse_text(data)
        bad = ""
        try:
            public.verify(bytes.fromhex(head.signature), data)
        except (InvalidSignature, ValueError):
            bad = "its signature does not verify with this instance's key"
        if not bad and (fields.get("seq") != str(head.seq) or fields.get("hash") != head.entry_hash):
            bad = "its record does not match the text signed"
        row = by_seq.get(head.seq)
        if not bad and (row is None or row.entry_hash != head.entry_hash):
            bad = f"the chain no longer holds the entry {head.seq} it signed"
        if not bad and head.timestamp_token and not _token_covers(head.timestamp_token, data):
            bad = "its time-stamp token is not over this head"
        if bad:
            report.problem(None, f"signed head at entry {head.seq}: {bad}")
            for seq in range(covered_from, head.seq + 1):
                if seq in by_seq:
                    report.problem(by_seq[seq].case_number, f"chain entry {seq} is under a bad signed head "
                                                            f"(entry {head.seq}): {bad}")
        covered_from = max(covered_from, head.seq + 1)


def _token_covers(token: bytes, data: bytes) -> bool:
    """A granted RFC 3161 answer carrying this text's SHA-256 (the TSA's own signature is
    checked with its CA by `openssl ts -verify`, as the bundle's README shows)."""
    try:
        return timestamp_status(token) in (0, 1) and hashlib.sha256(data).digest() in token
    except ChainError:
        return False


def removed_by_tombstones(rows: Iterable[ChainEntry]) -> dict[int, ChainEntry]:
    """Entry seq -> the tombstone that removed its file."""
    removed: dict[int, ChainEntry] = {}
    for row in rows:
        if row.kind == TOMBSTONE:
            try:
                for seq in json.loads(row.detail).get("removed", []):
                    removed[int(seq)] = row
            except (ValueError, TypeError, AttributeError):
                continue
    return removed


def _check_files(session: Session, root: Path, rows: list[ChainEntry], report: ChainReport) -> None:
    root = Path(root).resolve()
    removed = removed_by_tombstones(rows)
    for stone in {id(t): t for t in removed.values()}.values():
        detail = json.loads(stone.detail)
        report.removed.append(f"{stone.case_number}: {len(detail.get('removed', []))} item(s) removed at "
                              f"{stone.at} by rule {detail.get('rule', '?')} (chain entry {stone.seq})")
    chained: dict[tuple[str, str, str], ChainEntry] = {}
    for row in rows:
        if not row.path:
            continue
        chained[(row.case_number, row.path, row.sha256)] = row
        if row.seq in removed:
            continue
        report.files += 1
        path = (root / row.path).resolve()
        if not path.is_relative_to(root):
            report.problem(row.case_number, f"chain entry {row.seq} names a path outside the evidence folder")
            continue
        if not path.is_file():
            report.problem(row.case_number, f"evidence file {row.path} ({row.kind}, chain entry {row.seq}) is missing")
        elif sha256_file(path) != row.sha256:
            report.problem(row.case_number, f"evidence file {row.path} ({row.kind}, chain entry {row.seq}) "
                                            "does not match its hash in the chain")
    for item in session.scalars(select(Evidence).order_by(Evidence.id)):
        number = item.case.case_number
        entry = chained.get((number, item.path, item.sha256))
        if entry is None or (item.chain_seq is not None and item.chain_seq != entry.seq):
            report.problem(number, f"evidence {item.id} ({item.kind}, {item.path}) is recorded with a hash or "
                                   "place the chain does not hold")


def verify(db: Database, evidence_root: Path, public: Ed25519PublicKey, *, mirror: Path) -> ChainReport:
    """Recompute the whole chain, its mirror, its signed heads and every evidence file."""
    report = ChainReport()
    with db.sessions() as session:
        rows = list(session.scalars(select(ChainEntry).order_by(ChainEntry.seq)))
        report.entries = len(rows)
        by_seq = _check_links(rows, report)
        _check_mirror(by_seq, mirror, report)
        _check_heads(session, public, by_seq, report)
        _check_files(session, evidence_root, rows, report)
    return report
