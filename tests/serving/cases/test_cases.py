"""Events become cases: dedup while open, cooldown, reopen policy, restart-proof dedup,
immutable hashed evidence, and the outbox written with the change."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from detector.taxonomy import load_taxonomy
from serving.cases import CaseError, CasePolicy, CaseService
from serving.evidence import EvidenceStore
from serving.store.db import Database
from serving.store.models import Case, OutboxMessage


@pytest.fixture
def service_factory(db_url: str, tmp_path: Path):
    made = []

    def build(**policy) -> CaseService:
        db = Database(db_url)
        made.append(db)
        return CaseService(db, EvidenceStore(tmp_path / "evidence"), load_taxonomy(), CasePolicy(**policy),
                           model_version="test-1", public_url="http://gw.test")

    yield build
    for db in made:
        db.close()


def count(service: CaseService, model=Case) -> int:
    with service.db.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def outbox(service: CaseService) -> list[OutboxMessage]:
    with service.db.sessions() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def test_one_case_per_violation_instance(service_factory, make_event) -> None:
    cases = service_factory()
    first = cases.ingest(*make_event("opened", end_s=60))
    assert first.action == "created"
    assert cases.ingest(*make_event("updated", end_s=120, score=0.9)).action == "joined"
    assert cases.ingest(*make_event("updated", end_s=120, score=0.9)).action == "duplicate"
    # A second tracker instance (new event id) at the same place joins the open case.
    assert cases.ingest(*make_event("opened", event_id="ev-2", start_s=130, end_s=190)).case_number == first.case_number
    # A different place in the same zone, or a different violation, is a different case.
    other = cases.ingest(*make_event("opened", event_id="ev-3", box=(600, 600, 700, 700)))
    assert other.action == "created" and other.case_number != first.case_number
    assert cases.ingest(*make_event("opened", event_id="ev-4", violation="exposed_garbage")).action == "created"
    assert count(cases) == 3
    case = cases.get(first.case_number)
    assert case.occurrences == 2 and case.best_score == pytest.approx(0.9)
    assert case.matter_code == "37020206042" and case.matter_name and cases.public(case).source == "video"
    assert case.model_version == "test-1" and case.grid == "370202001001001"
    assert case.case_number.startswith("GW20261123-")


def test_an_opening_sent_again_is_not_a_new_occurrence(service_factory, make_event) -> None:
    """A file camera moved to another node replays its footage: the same event id opens again,
    its dwell crossing seen on another sampled frame (another last_seen)."""
    cases = service_factory()
    made = cases.ingest(*make_event("opened", end_s=60))
    cases.ingest(*make_event("closed", end_s=90))
    again = cases.ingest(*make_event("opened", end_s=62))
    assert again.case_number == made.case_number and again.action == "joined"
    cases.ingest(*make_event("closed", end_s=90))
    assert cases.get(made.case_number).occurrences == 1 and count(cases) == 1


def test_an_opening_filed_after_its_own_closing_is_not_a_new_occurrence(service_factory, make_event) -> None:
    """A hand-off files the moving camera's closing (the release call's answer) before a pull
    already under way brings that event's opening: one sighting still, counted once."""
    cases = service_factory()
    made = cases.ingest(*make_event("closed", end_s=90))
    late = cases.ingest(*make_event("opened", end_s=60))
    assert late.case_number == made.case_number and late.action == "joined"
    case = cases.get(made.case_number)
    assert case.occurrences == 1 and case.state == "ended" and count(cases) == 1  # not woken
    # An event id the case never heard of is another sighting, whichever transition comes first.
    cases.ingest(*make_event("updated", event_id="ev-2", start_s=70, end_s=95))
    assert cases.get(made.case_number).occurrences == 2


def test_dedup_survives_restart(service_factory, make_event) -> None:
    before = service_factory()
    made = before.ingest(*make_event("opened"))
    before.db.close()
    after = service_factory()  # a new process: nothing in memory
    assert after.ingest(*make_event("opened")).action == "duplicate"
    # The restarted pipeline does not know its old event ids: the place still matches.
    again = after.ingest(*make_event("opened", event_id="restarted-1", start_s=10, end_s=70))
    assert again.case_number == made.case_number and count(after) == 1


def test_cooldown_then_reopen_or_new(service_factory, make_event) -> None:
    cases = service_factory(cooldown_s=300, reopen_policy="reopen")
    made = cases.ingest(*make_event("opened", end_s=60))
    assert cases.ingest(*make_event("closed", end_s=60)).action == "ended"
    assert cases.get(made.case_number).state == "ended"
    # Back within the cooldown: the same violation flickering, same case, active again.
    flicker = cases.ingest(*make_event("opened", event_id="ev-b", start_s=200, end_s=260))
    assert flicker.action == "joined" and cases.get(made.case_number).state == "active"
    cases.ingest(*make_event("closed", event_id="ev-b", start_s=200, end_s=260))
    later = cases.ingest(*make_event("opened", event_id="ev-c", start_s=1000, end_s=1060))
    assert later.action == "reopened" and later.case_number == made.case_number
    assert cases.get(made.case_number).reopened == 1

    fresh = service_factory(cooldown_s=300, reopen_policy="new")
    fresh.ingest(*make_event("closed", event_id="ev-c", start_s=1000, end_s=1060))
    filed = fresh.ingest(*make_event("opened", event_id="ev-d", start_s=2000, end_s=2060))
    assert filed.action == "created" and count(fresh) == 2


def test_evidence_is_stored_unaltered_hashed_and_never_overwritten(service_factory, make_event, dataset_images, tmp_path) -> None:
    cases = service_factory()
    made = cases.ingest(*make_event("opened", score=0.5))
    case = cases.get(made.case_number)
    kinds = {e.kind: e for e in case.evidence}
    assert set(kinds) == {"original", "annotated", "crop"}
    original_bytes = dataset_images[0].read_bytes()
    stored = cases.evidence.resolve(kinds["original"].path)
    assert stored.read_bytes() == original_bytes
    assert kinds["original"].sha256 == hashlib.sha256(original_bytes).hexdigest()
    for item in case.evidence:
        assert hashlib.sha256(cases.evidence.resolve(item.path).read_bytes()).hexdigest() == item.sha256
    assert not os.access(stored, os.W_OK) or os.geteuid() == 0
    mtime = stored.stat().st_mtime_ns
    # Better evidence later adds files; the first ones stay as they were.
    cases.ingest(*make_event("updated", end_s=120, score=0.9, image=1))
    case = cases.get(made.case_number)
    assert len([e for e in case.evidence if e.kind == "original"]) == 2
    assert stored.read_bytes() == original_bytes and stored.stat().st_mtime_ns == mtime


def test_undecodable_evidence_still_makes_a_case_for_review(service_factory, make_event) -> None:
    cases = service_factory(auto_confirm={"bin_overflow": 0.5})
    event, frame = make_event("opened")
    made = cases.ingest(event, replace(frame, encoded=frame.encoded[:200]))  # a truncated upload
    case = cases.get(made.case_number)
    assert case.needs_review and not case.evidence
    assert outbox(cases) == []  # unreviewed without evidence never goes out on its own


def test_outbox_follows_policy_and_reviews(service_factory, make_event) -> None:
    cases = service_factory(auto_confirm={"bin_overflow": 0.75})
    low = cases.ingest(*make_event("opened", event_id="low", score=0.5, box=(0, 0, 50, 50)))
    high = cases.ingest(*make_event("opened", event_id="high", score=0.8))
    assert high.queued == "case.reported" and low.queued is None
    assert [m.idempotency_key for m in outbox(cases)] == [f"{high.case_number}-v1"]
    body = json.loads(outbox(cases)[0].payload)
    assert body["case"]["case_number"] == high.case_number
    assert body["case"]["evidence"][0]["url"].startswith(f"http://gw.test/v1/cases/{high.case_number}/evidence/")
    cases.review(low.case_number, "confirm", reviewer="amy")
    cases.review(high.case_number, "correct", violation="exposed_garbage")
    # Changing a decision is a re-decision (a second review is a 409: tests/serving/cases/test_decision_exclusivity.py).
    cases.redecide(high.case_number, "reject", reviewer="amy", why="not garbage after all", version=2)
    events = [(m.idempotency_key, m.event) for m in outbox(cases)]
    assert events[1:] == [
        (f"{low.case_number}-v1", "case.reported"),
        (f"{high.case_number}-v2", "case.updated"),
        (f"{high.case_number}-v3", "case.retracted"),
    ]
    corrected = json.loads(outbox(cases)[2].payload)["case"]
    assert corrected["matter_code"] == "37020206010" and corrected["violation"] == "exposed_garbage"
    with pytest.raises(CaseError) as err:
        cases.review("GW-nope", "confirm")
    assert err.value.status == 404


def test_status_callbacks_move_forward_only(service_factory, make_event) -> None:
    cases = service_factory()
    made = cases.ingest(*make_event("opened"))
    assert cases.set_status(made.case_number, "dispatched", external_id="QD-1").status == "dispatched"
    assert cases.set_status(made.case_number, "dispatched").status == "dispatched"  # repeats are fine
    with pytest.raises(CaseError):
        cases.set_status(made.case_number, "new")
    cases.set_status(made.case_number, "closed")
    cases.ingest(*make_event("closed"))
    # The case system closed it; the same thing seen again after the cooldown is a new case.
    again = cases.ingest(*make_event("opened", event_id="later", start_s=5000, end_s=5060))
    assert again.action == "created" and again.case_number != made.case_number


def test_restart_ends_stale_cases_and_the_stream_rejoins_them(service_factory, make_event) -> None:
    cases = service_factory(cooldown_s=300)
    made = cases.ingest(*make_event("opened", end_s=60))
    pushed = cases.ingest(*make_event("opened", event_id="edge-1", camera="edge-cam", end_s=60))
    assert cases.end_stale({"cam-001"}) == 1  # only the cameras this process streams
    assert cases.get(made.case_number).state == "ended" and cases.get(pushed.case_number).state == "active"
    again = cases.ingest(*make_event("opened", event_id="after-restart", start_s=200, end_s=260))
    assert again.action == "joined" and cases.get(made.case_number).state == "active"
    # A known event id is the same violation instance however late it comes back.
    late = cases.ingest(*make_event("updated", event_id="after-restart", start_s=200, end_s=5000))
    assert late.action == "joined" and cases.get(made.case_number).reopened == 0


def test_two_processes_on_postgresql_make_one_case(db_url, service_factory, make_event) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("several writers on one database is a PostgreSQL deployment")
    import threading

    first, second = service_factory(), service_factory()  # separate engines and locks, like two processes
    results = []
    barrier = threading.Barrier(2)

    def run(cases, event_id) -> None:
        barrier.wait()
        results.append(cases.ingest(*make_event("opened", event_id=event_id)).case_number)

    threads = [threading.Thread(target=run, args=(c, f"p-{i}")) for i, c in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1] and count(first) == 1


def test_original_frames_keep_what_the_model_saw(service_factory, make_event) -> None:
    import numpy as np

    from detector import Detections

    cases = service_factory()
    event, frame = make_event("opened")
    seen = Detections(xyxy=np.array([[100, 100, 300, 300], [10, 20, 60, 90]], np.float32),
                      scores=np.array([0.8, 0.55], np.float32), class_ids=np.array([1, 0]),
                      names={0: "person", 1: "bin_overflow"})
    made = cases.ingest(event.model_copy(update={"model_version": "gw-test-9"}), replace(frame, detections=seen))
    kinds = {e.kind: e for e in cases.get(made.case_number).evidence}
    original = kinds["original"]
    assert original.model_version == "gw-test-9"
    assert [(d["class_name"], d["box"], d["score"]) for d in original.detections] == [
        ("bin_overflow", [100.0, 100.0, 300.0, 300.0], 0.8), ("person", [10.0, 20.0, 60.0, 90.0], 0.55)]
    assert kinds["crop"].detections is None and kinds["annotated"].detections is None
    # An upload without detections: unknown, not empty.
    other = cases.ingest(*make_event("opened", event_id="ev-9", camera="cam-009"))
    assert {e.kind: e for e in cases.get(other.case_number).evidence}["original"].detections is None


def test_case_numbers_and_keys_are_unique_across_databases(db_url, tmp_path, make_event) -> None:
    """Two databases (two sites, or one reset) used to both send GW20261123-000001-v1 for
    different cases; a receiver honouring Idempotency-Key dropped the second."""
    def first_key(url: str) -> tuple[str, str]:
        db = Database(url)
        cases = CaseService(db, EvidenceStore(tmp_path / "ev"), load_taxonomy(), CasePolicy(auto_confirm={"bin_overflow": 0.5}))
        number = cases.ingest(*make_event()).case_number
        (message,) = outbox(cases)
        db.close()
        return number, message.idempotency_key

    number, key = first_key(db_url)
    other_number, other_key = first_key(f"sqlite:///{tmp_path / 'other.db'}")
    assert number != other_number and key != other_key
    assert key == f"{number}-v1"
    assert re.fullmatch(r"GW20261123-[A-Z2-7]{6}-000001", number)
    # Every process (and every restart) on one database numbers with the same code.
    again, another = Database(db_url), Database(db_url)
    from serving.cases.service import stored_instance

    assert stored_instance(again) == stored_instance(another) == number.split("-")[1]
    again.close()
    another.close()
