"""Decisions are exclusive (issue #26 item 4, #29 items 2 and 12): one decision per case,
made on the version the reviewer saw; a case leased to someone else, already decided, or
moved on is a 409 that says who holds it; changing a decision is its own audited action
(re-decide with a reason, or undo one's own recent decision); decisions are throttled per
person; a reviewer's boxes lie inside the frame."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, update

from detector.taxonomy import load_taxonomy
from serving.cases import CaseError, CasePolicy, CaseService
from serving.cases.review import DecisionConflict, DecisionThrottle, Throttled
from serving.evidence import EvidenceStore
from serving.store.db import Database
from serving.store.models import AuditEntry, Case, OutboxMessage


@pytest.fixture
def make_cases(db_url: str, tmp_path: Path):
    made = []

    def build(**options) -> CaseService:
        db = Database(db_url)
        made.append(db)
        return CaseService(db, EvidenceStore(tmp_path / "evidence"), load_taxonomy(),
                           CasePolicy(auto_confirm=options.pop("auto_confirm", {})),
                           model_version="test-1", public_url="http://gw.test", **options)

    yield build
    for db in made:
        db.close()


def audit_of(cases: CaseService, number: str) -> list[AuditEntry]:
    with cases.db.sessions() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.target == f"case:{number}")
                                    .order_by(AuditEntry.id)))


def outbox_of(cases: CaseService) -> list[tuple[int, str]]:
    with cases.db.sessions() as session:
        return [(m.case_version, m.event) for m in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]


def lease(cases: CaseService, number: str, holder: str) -> None:
    with cases.db.transaction() as session:
        session.execute(update(Case).where(Case.case_number == number).values(
            leased_by=holder, lease_until=datetime.now(timezone.utc) + timedelta(minutes=2)))


def test_a_second_decision_is_a_conflict_and_redecide_is_explicit(make_cases, make_event) -> None:
    cases = make_cases()
    number = cases.ingest(*make_event("opened")).case_number
    first = cases.review(number, "confirm", reviewer="amy", version=0)
    assert first.review_status == "confirmed" and first.version == 1
    with pytest.raises(DecisionConflict) as second:
        cases.review(number, "reject", reviewer="bob", reason="false_alarm")
    assert second.value.status == 409 and second.value.holder == "amy" and second.value.version == 1
    assert "re-decide" in str(second.value)
    # Re-deciding needs the version seen and a reason; a stale version says who holds it.
    with pytest.raises(CaseError) as no_why:
        cases.redecide(number, "reject", reviewer="bob", why="  ", version=1, reason="false_alarm")
    assert no_why.value.status == 422
    with pytest.raises(DecisionConflict) as stale:
        cases.redecide(number, "reject", reviewer="bob", why="a shadow", version=0, reason="false_alarm")
    assert stale.value.holder == "amy" and stale.value.version == 1
    changed = cases.redecide(number, "reject", reviewer="bob", why="a shadow, not garbage", version=1,
                             reason="false_alarm")
    assert changed.review_status == "rejected" and changed.version == 2
    assert outbox_of(cases) == [(1, "case.reported"), (2, "case.retracted")]
    actions = [(e.actor, e.action) for e in audit_of(cases, number)]
    assert actions == [("amy", "review.confirm"), ("bob", "review.redecide")]
    redecided = audit_of(cases, number)[-1]
    assert redecided.before["review_status"] == "confirmed" and redecided.after["why"] == "a shadow, not garbage"
    # The same decision again changes nothing: refused, not audited.
    with pytest.raises(CaseError) as same:
        cases.redecide(number, "reject", reviewer="bob", why="again", version=2, reason="false_alarm")
    assert same.value.status == 422
    # A pending case has no decision to change.
    other = cases.ingest(*make_event("opened", event_id="ev-2", box=(600, 600, 700, 700))).case_number
    with pytest.raises(DecisionConflict):
        cases.redecide(other, "confirm", reviewer="bob", why="x", version=0)


def test_a_case_leased_to_someone_else_is_theirs(make_cases, make_event) -> None:
    cases = make_cases()
    number = cases.ingest(*make_event("opened")).case_number
    lease(cases, number, "amy")
    for reviewer in ("bob", "api-key"):  # page and API alike
        with pytest.raises(DecisionConflict) as taken:
            cases.review(number, "reject", reviewer=reviewer, reason="false_alarm")
        assert taken.value.holder == "amy" and taken.value.review_status == "pending"
    assert cases.review(number, "confirm", reviewer="amy", version=0).review_status == "confirmed"
    with cases.db.sessions() as session:
        assert session.scalar(select(Case.leased_by).where(Case.case_number == number)) == ""


def test_five_reviewers_at_once_one_wins(make_cases, make_event) -> None:
    # Five services on one database, as five processes would be: only the database decides.
    services = [make_cases() for _ in range(5)]
    number = services[0].ingest(*make_event("opened")).case_number
    barrier = threading.Barrier(5)
    outcomes: list[str] = []

    def decide(i: int) -> None:
        barrier.wait()
        try:
            services[i].review(number, "confirm" if i % 2 else "reject", reviewer=f"r{i}", version=0,
                               reason="" if i % 2 else "false_alarm")
            outcomes.append("won")
        except DecisionConflict:
            outcomes.append("409")

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["409"] * 4 + ["won"]
    decisions = [e for e in audit_of(services[0], number) if e.action.startswith("review.")]
    assert len(decisions) == 1
    assert len(outbox_of(services[0])) <= 1  # a confirm reports once, a reject sends nothing


def test_correcting_to_the_same_kind_is_refused(make_cases, make_event) -> None:
    cases = make_cases()
    number = cases.ingest(*make_event("opened")).case_number  # bin_overflow
    with pytest.raises(CaseError) as same:
        cases.review(number, "correct", reviewer="amy", violation="bin_overflow", version=0)
    assert same.value.status == 422 and "already is bin_overflow" in str(same.value)
    assert cases.get(number).review_status == "pending" and audit_of(cases, number) == []


def test_decisions_per_minute_are_limited(make_cases, make_event) -> None:
    cases = make_cases(decisions_per_min=3)
    numbers = [cases.ingest(*make_event("opened", event_id=f"e{i}", camera=f"cam-{i}")).case_number
               for i in range(5)]
    for number in numbers[:3]:
        cases.review(number, "confirm", reviewer="amy")
    with pytest.raises(Throttled) as throttled:
        cases.review(numbers[3], "confirm", reviewer="amy")
    assert throttled.value.status == 429 and 0 < throttled.value.retry_after_s <= 60
    assert cases.get(numbers[3]).review_status == "pending"
    cases.review(numbers[3], "confirm", reviewer="bob")  # per person
    now = [1000.0]
    throttle = DecisionThrottle(2, clock=lambda: now[0])
    throttle.take("amy"), throttle.take("amy")
    with pytest.raises(Throttled):
        throttle.take("amy")
    now[0] += 60.5
    throttle.take("amy")  # a minute later there is room again


def test_undo_takes_back_ones_own_recent_decision(make_cases, make_event) -> None:
    cases = make_cases()
    number = cases.ingest(*make_event("opened")).case_number
    decided = cases.review(number, "correct", reviewer="amy", violation="exposed_garbage", version=0)
    with pytest.raises(CaseError) as not_yours:
        cases.undo(number, reviewer="bob", version=decided.version, within_s=300, lease_s=60)
    assert not_yours.value.status == 409
    with pytest.raises(DecisionConflict):
        cases.undo(number, reviewer="amy", version=decided.version - 1, within_s=300, lease_s=60)
    undone = cases.undo(number, reviewer="amy", version=decided.version, within_s=300, lease_s=60)
    assert undone.review_status == "pending" and undone.violation == "bin_overflow"
    case = cases.get(number)
    assert case.leased_by == "amy" and case.reviewed_by == "" and case.matter_code.endswith(
        load_taxonomy()["bin_overflow"].matter_code)
    # The report already queued is followed by a retraction; the undo is audited.
    assert outbox_of(cases) == [(1, "case.reported"), (2, "case.retracted")]
    assert [e.action for e in audit_of(cases, number)] == ["review.correct", "review.undo"]
    # Nothing left to undo; a decision older than the window is re-decided instead.
    with pytest.raises(CaseError):
        cases.undo(number, reviewer="amy", version=2, within_s=300, lease_s=60)
    cases.review(number, "confirm", reviewer="amy", version=2)
    with pytest.raises(CaseError) as too_old:
        cases.undo(number, reviewer="amy", version=3, within_s=0, lease_s=60)
    assert "re-decide" in str(too_old.value)


def test_review_boxes_lie_inside_the_frame(make_cases, make_event) -> None:
    cases = make_cases()
    event, frame = make_event("opened")
    number = cases.ingest(event, frame).case_number
    height, width = frame.decoded().shape[:2] if frame.image is None else frame.image.shape[:2]
    for absurd in ([[0, 0, 1e12, 1e12]], [[0, 0, float("inf"), 10]], [[width + 10, 0, width + 50, 40]], [[5, 5, 5, 9]]):
        with pytest.raises(CaseError) as refused:
            cases.review(number, "confirm", reviewer="amy", boxes=absurd)
        assert refused.value.status == 422, absurd
    done = cases.review(number, "confirm", reviewer="amy", boxes=[[-20, 10, width + 300, height - 10]])
    assert cases.get(number).review_boxes == [[0.0, 10.0, float(width), float(height - 10)]]
    assert done.review_status == "confirmed"
