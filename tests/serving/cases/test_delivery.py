"""Webhook delivery: signed, retried with backoff, dead-lettered and replayed, and exactly
once per case version for a receiver that dedups by Idempotency-Key."""

from __future__ import annotations

import random
import time

import pytest
from sqlalchemy import select

from tests.support.service import wait_for
from serving.cases import CaseService
from serving.delivery import DeliveryConfig, DeliveryWorker, backoff_delay, outbox_stats, replay, sign, verify
from serving.store.models import OutboxMessage


def worker_for(cases: CaseService, receiver, **overrides) -> DeliveryWorker:
    config = dict(url=receiver.url, secret=receiver.secret, max_tries=50, backoff_s=0.05,
                  backoff_max_s=0.3, timeout_s=2.0, poll_s=0.05)
    config.update(overrides)
    return DeliveryWorker(cases.db, DeliveryConfig(**config))


def test_signature_is_hmac_over_timestamp_and_body() -> None:
    body = b'{"a": 1}'
    signature = sign("s3cret", "1700000000", body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify("s3cret", "1700000000", body, signature, now=1700000010)
    assert not verify("s3cret", "1700000000", body + b" ", signature, now=1700000010)
    assert not verify("other", "1700000000", body, signature, now=1700000010)
    assert not verify("s3cret", "1700000000", body, signature, now=1700009999)  # stale


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 1.0, 30.0, rng) for n in range(1, 9)]
    assert all(0.5 * min(30, 2 ** (n - 1)) <= d <= min(30, 2 ** (n - 1)) for n, d in enumerate(delays, 1))
    assert len({round(backoff_delay(3, 1.0, 30.0, rng), 6) for _ in range(20)}) > 1


def test_receiver_down_then_every_case_delivered_exactly_once(cases, receiver, make_event) -> None:
    made = [cases.ingest(*make_event("opened", event_id=f"e{i}", camera=f"cam-{i}")).case_number for i in range(6)]
    worker = worker_for(cases, receiver)
    worker.start()
    try:
        # The receiver is not listening: connections are refused and tries pile up. Waiting for
        # them rather than sleeping a fixed time keeps a slow database start from failing this.
        def every_message_tried() -> bool:
            with cases.db.sessions() as session:
                return all(m.attempts >= 1 for m in session.scalars(select(OutboxMessage)))

        wait_for(every_message_tried)
        with cases.db.sessions() as session:
            assert all(m.state == "pending" for m in session.scalars(select(OutboxMessage)))
        receiver.start()
        wait_for(lambda: len(receiver.received) == 6)
        # More cases while it is up, and one receiver hiccup answering 503.
        receiver.fail_with = 503
        made += [cases.ingest(*make_event("opened", event_id=f"x{i}", camera=f"cam-x{i}")).case_number for i in range(3)]
        worker.wake()
        wait_for(lambda: receiver.requests >= 9)
        receiver.fail_with = None
        wait_for(lambda: outbox_stats(cases.db)["delivered"] == 9)
    finally:
        worker.stop()
    assert receiver.reported() == {number: 1 for number in made}
    assert receiver.bad_signatures == 0
    assert outbox_stats(cases.db)["pending"] == 0


def test_dead_letter_after_max_tries_then_replay(cases, receiver, make_event) -> None:
    number = cases.ingest(*make_event("opened")).case_number
    receiver.start()
    receiver.fail_with = 500
    worker = worker_for(cases, receiver, max_tries=3)
    worker.start()
    try:
        wait_for(lambda: outbox_stats(cases.db)["dead"] == 1)
        assert receiver.requests == 3
        with cases.db.sessions() as session:
            dead = session.scalars(select(OutboxMessage)).one()
            assert dead.state == "dead" and "HTTP 500" in dead.last_error
        receiver.fail_with = None
        assert replay(cases.db, case_number="GW-other") == 0
        assert replay(cases.db, case_number=number) == 1
        worker.wake()
        wait_for(lambda: outbox_stats(cases.db)["delivered"] == 1)
    finally:
        worker.stop()
    assert receiver.reported() == {number: 1}


def test_versions_of_one_case_go_out_in_order(cases, receiver, make_event) -> None:
    number = cases.ingest(*make_event("opened")).case_number
    order: list[str] = []
    receiver.start()
    worker = worker_for(cases, receiver)
    original = worker._send

    def record(message):
        order.append(message.idempotency_key)
        return original(message)

    worker._send = record
    worker.start()
    try:
        wait_for(lambda: outbox_stats(cases.db)["delivered"] == 1)
        cases.review(number, "correct", violation="exposed_garbage")
        wait_for(lambda: outbox_stats(cases.db)["delivered"] == 2)
        cases.redecide(number, "reject", reviewer="amy", why="not a violation", version=2)
        wait_for(lambda: outbox_stats(cases.db)["delivered"] == 3)
    finally:
        worker.stop()
    assert order == [f"{number}-v1", f"{number}-v2", f"{number}-v3"]
    assert [b["event"] for b in receiver.received.values()] == ["case.reported", "case.updated", "case.retracted"]


def test_replay_command(cases, receiver, make_event, tmp_path, capsys) -> None:
    from serving.cli import main

    number = cases.ingest(*make_event("opened")).case_number
    receiver.start()
    receiver.fail_with = 503
    worker = worker_for(cases, receiver, max_tries=2)
    worker.start()
    try:
        wait_for(lambda: outbox_stats(cases.db)["dead"] == 1)
    finally:
        worker.stop()
    config = tmp_path / "gridwatch.yaml"
    config.write_text(f"settings:\n  database_url: '{cases.db.url}'\n  data_dir: '{tmp_path / 'data'}'\n")
    assert main(["cases", "outbox", "--config", str(config)]) == 0
    assert '"dead": 1' in capsys.readouterr().out
    assert main(["cases", "replay", "--config", str(config), "--case", "GW20990101-NOPE-000001"]) == 2
    assert main(["cases", "replay", "--config", str(config), "--case", number]) == 0
    assert capsys.readouterr().out.startswith("1 message(s) queued again")
    assert outbox_stats(cases.db)["pending"] == 1
    receiver.fail_with = None
    worker = worker_for(cases, receiver)
    worker.start()
    try:
        wait_for(lambda: outbox_stats(cases.db)["delivered"] == 1)
    finally:
        worker.stop()
    assert receiver.reported() == {number: 1}


def test_two_workers_on_one_database_send_each_message_once(cases, receiver, make_event) -> None:
    numbers = [cases.ingest(*make_event("opened", event_id=f"w{i}", camera=f"cam-{i}")).case_number for i in range(16)]
    receiver.start()
    receiver.delay_s = 0.02
    workers = [worker_for(cases, receiver), worker_for(cases, receiver)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: outbox_stats(cases.db)["delivered"] == 16)
    finally:
        for worker in workers:
            worker.stop()
    assert receiver.requests == 16  # not one message sent twice
    assert receiver.reported() == {number: 1 for number in numbers}


@pytest.mark.parametrize("status, dead", [(400, True), (422, True), (408, False), (429, False)])
def test_a_refusing_receiver_dead_letters_at_once(cases, receiver, make_event, status, dead) -> None:
    """A 4xx (but 408 and 429) is the receiver refusing this message: retrying the same bytes
    for hours changes nothing, so it goes to the dead letter at once with the reason."""
    cases.ingest(*make_event("opened"))
    receiver.start()
    receiver.fail_with = status
    worker = worker_for(cases, receiver, max_tries=5)
    for _ in range(2):
        worker.run_once()
        time.sleep(0.4)  # past the backoff (at most 0.3 s here)
    worker.stop()
    with cases.db.sessions() as session:
        message = session.scalars(select(OutboxMessage)).one()
    assert (message.state == "dead") is dead and f"HTTP {status}" in message.last_error
    assert receiver.requests == (1 if dead else 2)
    assert ("not retried" in message.last_error) is dead


@pytest.mark.parametrize("fault", ["hangs", "hangs_up", "answers_500"])
def test_a_misbehaving_case_system_gets_every_case_once_after_it_recovers(cases, receiver, make_event, fault) -> None:
    """Part of the fault matrix: a case system that hangs past the timeout, closes the
    connection without answering, or answers 500, then recovers: nothing lost, nothing twice."""
    receiver.start()
    if fault == "hangs":
        receiver.delay_s = 1.5  # past the worker's 1 s timeout: it gives up and tries again
    elif fault == "hangs_up":
        receiver.hang_up = True
    else:
        receiver.fail_with = 500
    made = [cases.ingest(*make_event("opened", event_id=f"f{i}", camera=f"cam-f{i}")).case_number for i in range(3)]
    worker = worker_for(cases, receiver, timeout_s=1.0)
    worker.start()
    try:
        wait_for(lambda: receiver.requests >= 4, timeout=30)
        assert outbox_stats(cases.db)["dead"] == 0 and worker.counts["failed"] >= 1
        receiver.delay_s, receiver.hang_up, receiver.fail_with = 0.0, False, None
        wait_for(lambda: outbox_stats(cases.db)["delivered"] == 3, timeout=30)
    finally:
        worker.stop()
    assert receiver.reported() == {number: 1 for number in made}
    assert receiver.bad_signatures == 0 and outbox_stats(cases.db)["pending"] == 0
