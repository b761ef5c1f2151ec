"""Webhook deliveries coalesce (issue #26 item 5): a case that changes again before its
previous version went out sends only its newest version, so the case system never gets a
stale version after a newer one, and a burst of changes is one delivery, not one each."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from serving.cases import CaseService
from serving.delivery import DeliveryConfig, DeliveryWorker, replay
from serving.store.models import OutboxMessage


@pytest.fixture
def worker(cases, receiver):
    receiver.start()
    made = DeliveryWorker(cases.db, DeliveryConfig(url=receiver.url, secret=receiver.secret, max_tries=5,
                                                   backoff_s=0.05, backoff_max_s=0.3, timeout_s=2.0, poll_s=0.05))
    yield made
    made.stop()


def states(cases: CaseService) -> list[tuple[int, str, str]]:
    with cases.db.sessions() as session:
        return [(m.case_version, m.event, m.state)
                for m in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]


def sent(receiver) -> list[tuple[str, str]]:
    return [(b["case"]["case_number"] + f"-v{b['version']}", b["event"]) for b in map(json.loads, receiver.raw_bodies)]


def test_only_the_newest_version_goes_out(cases, worker, receiver, make_event) -> None:
    number = cases.ingest(*make_event("opened")).case_number  # v1: reported (auto-confirm)
    cases.review(number, "correct", reviewer="amy", violation="exposed_garbage")  # v2 before v1 went out
    worker.run_once()
    # The case system never saw v1: v2 arrives alone, as the case's report, signed as sent.
    assert sent(receiver) == [(f"{number}-v2", "case.reported")]
    assert receiver.bad_signatures == 0
    assert states(cases) == [(1, "case.reported", "superseded"), (2, "case.reported", "delivered")]
    cases.redecide(number, "reject", reviewer="amy", why="not garbage", version=2, reason="false_alarm")
    worker.run_once()
    assert sent(receiver)[1:] == [(f"{number}-v3", "case.retracted")]


def test_a_burst_of_changes_is_one_delivery(cases, worker, receiver, make_event) -> None:
    number = cases.ingest(*make_event("opened")).case_number
    cases.review(number, "confirm", reviewer="amy")
    for i in range(8):  # flip-flopping re-decisions while nothing is sent
        action = "reject" if i % 2 == 0 else "confirm"
        cases.redecide(number, action, reviewer="amy", why=f"flip {i}", version=cases.get(number).version,
                       reason="false_alarm" if action == "reject" else "")
    final = cases.get(number)
    worker.run_once()
    assert sent(receiver) == [(f"{number}-v{final.version}", "case.reported")]
    assert final.review_status == "confirmed"


def test_a_retraction_of_what_was_never_sent_is_not_sent(cases, worker, receiver, make_event) -> None:
    number = cases.ingest(*make_event("opened")).case_number  # v1 reported, not yet sent
    cases.review(number, "reject", reviewer="amy", reason="false_alarm")  # v2 retracted
    worker.run_once()
    assert receiver.raw_bodies == []
    assert [s for _, _, s in states(cases)] == ["superseded", "superseded"]


def test_never_an_older_version_after_a_newer_one(cases, worker, receiver, make_event) -> None:
    number = cases.ingest(*make_event("opened")).case_number
    worker.run_once()
    cases.review(number, "correct", reviewer="amy", violation="exposed_garbage")
    worker.run_once()
    assert sent(receiver) == [(f"{number}-v1", "case.reported"), (f"{number}-v2", "case.updated")]
    # Everything put back in the queue (a replay of delivered messages): v1 is older than the
    # v2 the case system has, so only v2 goes again (same key: the receiver ignores it).
    assert replay(cases.db, include_delivered=True) == 2
    worker.run_once()
    assert sent(receiver)[2:] == [(f"{number}-v2", "case.updated")]
