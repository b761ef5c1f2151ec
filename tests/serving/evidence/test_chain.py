"""The evidence chain: every item and decision appended and mirrored; `gridwatch evidence
verify` accepts an untouched store and names each case whose evidence or history was changed
(a byte of an original, a deleted file, reordered or removed chain rows, a forged signature)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text

from serving.chain import KEY_NAME, MIRROR_NAME, read_mirror
from serving.store.models import ChainEntry, ChainHead, Evidence
from tests.support.evidence import Chained, run_cli


@pytest.fixture
def chained(tmp_path: Path, make_event):
    store = Chained(tmp_path / "data")
    first = store.cases.ingest(*make_event("opened", end_s=60)).case_number
    store.cases.ingest(*make_event("updated", end_s=120, score=0.95, image=1))  # better evidence
    second = store.cases.ingest(*make_event("opened", event_id="ev-2", box=(600, 600, 700, 700), image=2)).case_number
    store.cases.review(first, "confirm", reviewer="ana")
    store.cases.set_status(first, "dispatched", external_id="ext-1")
    store.signer.sign_head()
    store.names = (first, second)
    yield store
    store.db.close()


def writable(path: Path) -> Path:
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return path


def test_every_item_and_decision_is_chained_and_mirrored(chained) -> None:
    first, second = chained.names
    with chained.db.sessions() as session:
        rows = session.scalars(select(ChainEntry).order_by(ChainEntry.seq)).all()
        evidence = session.scalars(select(Evidence)).all()
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    assert all(r.prev_hash == p.entry_hash for p, r in zip(rows, rows[1:]))
    # Each evidence row holds its chain position, with the same hash.
    by_seq = {r.seq: r for r in rows}
    assert all(by_seq[e.chain_seq].sha256 == e.sha256 and by_seq[e.chain_seq].path == e.path for e in evidence)
    kinds = [(r.case_number, r.kind) for r in rows]
    assert (first, "decision") in kinds and (first, "status") in kinds
    decision = next(r for r in rows if r.kind == "decision")
    assert json.loads(decision.detail)["after"]["review_status"] == "confirmed"
    assert {(second, k) for k in ("original", "annotated", "crop")} <= set(kinds)
    # The file beside the evidence holds the same entries.
    mirrored = read_mirror(chained.data_dir / MIRROR_NAME)
    assert [(m["seq"], m["hash"]) for m in mirrored] == [(r.seq, r.entry_hash) for r in rows]
    # The webhook body names each item's chain position.
    case = chained.cases.public(chained.cases.get(first))
    assert all(item.chain_seq is not None for item in case.evidence)


def test_verify_passes_on_untouched_evidence(chained) -> None:
    code, out = chained.verify()
    assert code == 0, out
    assert "0 case(s) do not match" in out
    assert (chained.data_dir / KEY_NAME).stat().st_mode & 0o777 == 0o600


def test_one_changed_byte_of_an_original_is_named(chained) -> None:
    first, second = chained.names
    path = writable(chained.evidence(second))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, out = chained.verify()
    assert code == 1
    assert f"FAIL {second}: evidence file" in out and "does not match its hash" in out
    assert f"FAIL {first}" not in out
    assert chained.verify(first)[0] == 0  # the other case still stands on its own


def test_a_deleted_evidence_file_is_named(chained) -> None:
    first, _ = chained.names
    chained.evidence(first, "crop").unlink()
    code, out = chained.verify()
    assert code == 1 and f"FAIL {first}: evidence file" in out and "is missing" in out


def test_reordered_chain_rows_are_named(chained) -> None:
    first, second = chained.names
    with chained.db.transaction() as session:
        rows = session.scalars(select(ChainEntry).order_by(ChainEntry.seq)).all()
        a = next(r for r in rows if r.case_number == first)
        b = next(r for r in rows if r.case_number == second)
        # Swap the two rows' places, each keeping its own (valid) hash.
        session.execute(text("UPDATE evidence_chain SET seq = -1 WHERE seq = :a"), {"a": a.seq})
        session.execute(text("UPDATE evidence_chain SET seq = :a WHERE seq = :b"), {"a": a.seq, "b": b.seq})
        session.execute(text("UPDATE evidence_chain SET seq = :b WHERE seq = -1"), {"b": b.seq})
    code, out = chained.verify()
    assert code == 1
    assert f"FAIL {first}: chain entry" in out and f"FAIL {second}: chain entry" in out


def test_a_removed_chain_row_is_named_from_the_mirror(chained) -> None:
    _, second = chained.names
    with chained.db.transaction() as session:
        row = session.scalars(select(ChainEntry).where(ChainEntry.case_number == second,
                                                       ChainEntry.kind == "crop")).one()
        session.execute(text("DELETE FROM evidence_chain WHERE seq = :s"), {"s": row.seq})
    code, out = chained.verify(second)
    assert code == 1 and f"FAIL {second}:" in out and "removed from the database" in out


def test_a_rewritten_decision_is_named(chained) -> None:
    first, _ = chained.names
    with chained.db.transaction() as session:
        session.execute(text("UPDATE evidence_chain SET detail = replace(detail, 'confirmed', 'rejected') "
                             "WHERE kind = 'decision'"))
    code, out = chained.verify()
    assert code == 1 and f"FAIL {first}: chain entry" in out and "changed after it was written" in out


def test_a_forged_signature_is_named(chained) -> None:
    """A head re-signed with another key (someone who rewrote the chain and signed it anew)."""
    first, second = chained.names
    forger = Ed25519PrivateKey.generate()
    with chained.db.transaction() as session:
        head = session.scalars(select(ChainHead)).one()
        head.signature = forger.sign(head.text.encode()).hex()
    code, out = chained.verify()
    assert code == 1
    assert "signature does not verify" in out
    assert f"FAIL {first}:" in out and f"FAIL {second}:" in out


def test_a_rewritten_evidence_row_and_file_are_caught_by_the_chain(chained) -> None:
    """Someone who can write the database and the disk replaces a file and its recorded hash:
    the chain entry still holds the first hash."""
    _, second = chained.names
    path = writable(chained.evidence(second, "annotated"))
    path.write_bytes(b"not the evidence")
    import hashlib

    with chained.db.transaction() as session:
        session.execute(text("UPDATE evidence SET sha256 = :h WHERE path = :p"),
                        {"h": hashlib.sha256(b"not the evidence").hexdigest(),
                         "p": path.relative_to(chained.store.root).as_posix()})
    code, out = chained.verify(second)
    assert code == 1 and "the chain does not hold" in out and "does not match its hash" in out


def test_an_unknown_case_and_a_missing_key_are_clear_errors(chained, tmp_path: Path) -> None:
    code, out = chained.verify("GW20990101-NOPE-000001")
    assert code == 1 and "not in the evidence chain" in out
    assert run_cli(["evidence", "verify", "--data-dir", str(tmp_path / "empty")])[0] == 2


def test_the_key_command_prints_the_public_key(chained) -> None:
    code, out = run_cli(["evidence", "key", "--data-dir", str(chained.data_dir)])
    assert code == 0 and out.startswith("-----BEGIN PUBLIC KEY-----") and "fingerprint" in out
    assert "PRIVATE" not in out


def test_the_mirror_catches_up_after_a_lost_write(chained) -> None:
    mirror = chained.data_dir / MIRROR_NAME
    lines = mirror.read_text().splitlines(keepends=True)
    mirror.write_text("".join(lines[:-2]))  # a crash between commit and the file write
    assert chained.verify()[0] == 1
    assert chained.chain.sync_mirror(chained.db) == 2
    assert chained.verify()[0] == 0


def test_evidence_stored_before_the_chain_joins_it_once(tmp_path: Path, make_event) -> None:
    from detector.taxonomy import load_taxonomy
    from serving.cases import CasePolicy, CaseService
    from serving.chain import EvidenceChain, enrol_unchained
    from serving.evidence import EvidenceStore
    from serving.store.db import Database

    data = tmp_path / "data"
    db = Database(f"sqlite:///{data / 'gridwatch.db'}")
    old = CaseService(db, EvidenceStore(data / "evidence"), load_taxonomy(), CasePolicy(), model_version="t")
    number = old.ingest(*make_event("opened")).case_number  # an older release: no chain
    db.close()
    store = Chained(data)
    assert enrol_unchained(store.db, store.chain) == 3
    assert enrol_unchained(store.db, store.chain) == 0
    store.signer.sign_head()
    code, out = store.verify(number)
    assert code == 0, out
    assert isinstance(store.chain, EvidenceChain)
    store.db.close()


def test_the_service_signs_at_an_interval_and_at_shutdown(run_service, dataset_images) -> None:
    from tests.support.service import event_json, push, wait_for

    server = run_service(chain_sign_every_s=0.2)
    with server.client(server.key("camera")) as http:
        assert push(http, event_json(), dataset_images[0]).status_code == 200
    db = server.service.db

    def newest(model):  # noqa: ANN001, ANN202
        with db.sessions() as session:
            return session.scalars(select(model).order_by(model.seq.desc()).limit(1)).first()

    wait_for(lambda: newest(ChainHead) is not None and newest(ChainHead).seq == newest(ChainEntry).seq)
    key = (server.service.settings.data_dir / KEY_NAME)
    assert key.stat().st_mode & 0o777 == 0o600
    server.service.settings.chain_sign_every_s = 3600  # only the shutdown signs from here
    import time

    time.sleep(0.6)  # the loop's current 0.2 s wait ends; its next is the long one
    with server.client(server.key("reviewer")) as http:
        number = http.get("/v1/cases").json()["items"][0]["case_number"]
        assert http.post(f"/v1/cases/{number}/review", json={"action": "confirm"}).status_code == 200
    last = newest(ChainEntry).seq
    assert newest(ChainHead).seq < last  # the decision is not signed yet
    server.stop()
    server.stop = lambda: None  # the fixture's own stop
    from serving.store.db import Database

    again = Database(server.service.settings.resolved_database_url)
    with again.sessions() as session:
        assert session.scalars(select(ChainHead).order_by(ChainHead.seq.desc())).first().seq == last
    again.close()
    # verify and bundle with the service's own settings, as an operator runs them.
    data_dir = str(server.service.settings.data_dir)
    code, out = run_cli(["evidence", "verify", "--data-dir", data_dir])
    assert code == 0 and "0 case(s) do not match" in out, out
    bundle = server.service.settings.data_dir.parent / "case.zip"
    assert run_cli(["evidence", "bundle", number, "--out", str(bundle), "--data-dir", data_dir])[0] == 0
    code, out = run_cli(["evidence", "verify", "--bundle", str(bundle), "--data-dir", data_dir])
    assert code == 0 and "bundle intact" in out, out


def test_decisions_from_several_threads_keep_one_unbroken_chain(chained) -> None:
    """An admin's audited read (its own transaction) beside case writes: each transaction
    draws the next position, none is lost or doubled."""
    import threading

    from serving.audit import record

    first, second = chained.names
    failures: list[BaseException] = []

    def read_sealed(number: str) -> None:
        try:
            for i in range(15):
                with chained.db.transaction() as session:
                    record(session, "admin", "evidence.unseal", f"case:{number}", None, {"reason": f"r{i}"})
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=read_sealed, args=(n,)) for n in (first, second, first)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    with chained.db.sessions() as session:
        seqs = session.scalars(select(ChainEntry.seq).order_by(ChainEntry.seq)).all()
    assert seqs == list(range(1, len(seqs) + 1))
    assert sum(1 for m in read_mirror(chained.data_dir / MIRROR_NAME)) == len(seqs)
    chained.signer.sign_head()
    assert chained.verify()[0] == 0
