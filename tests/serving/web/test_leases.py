"""Case leases over HTTP: a leased case is nobody else's until its decision or its timeout;
an open page renews its leases; leasing is not a change the case system polls for."""

from __future__ import annotations

from datetime import timedelta

import httpx

from tests.support.service import MovableClock
from tests.support.web import add_user, http_sign_in, queue_cases


def claim(http: httpx.Client, skip: list[str] | None = None) -> str | None:
    answer = http.post("/review/next", json={"skip": skip or []}, headers={"X-CSRF-Token": http.cookies["gw_csrf"]})
    answer.raise_for_status()
    case = answer.json()["case"]
    return case["case_number"] if case else None


def test_leases_time_out_unless_renewed(run_service, db_url, dataset_images) -> None:
    # Time moves on the service's clock: sleeping past a 1 s lease raced a loaded machine's
    # requests, which can take longer than the lease.
    clock = MovableClock()
    server = run_service(db_url, clock=clock, review_lease_s=60.0)
    (number,) = queue_cases(server, dataset_images, 1)
    with server.client(server.key("reviewer")) as api:
        updated_before = api.get(f"/v1/cases/{number}").json()["updated_at"]
    add_user(server, "alice")
    add_user(server, "bob")
    with httpx.Client(base_url=server.url) as alice, httpx.Client(base_url=server.url) as bob:
        http_sign_in(alice, "alice")
        http_sign_in(bob, "bob")
        assert claim(alice) == number
        assert claim(bob) is None  # alice holds it
        for _ in range(3):  # alice's page keeps it open past the lease time
            clock.offset += timedelta(seconds=40)
            renewed = alice.post("/review/leases", json={"cases": [number]},
                                 headers={"X-CSRF-Token": alice.cookies["gw_csrf"]})
            assert renewed.json() == {"renewed": 1}
        assert claim(bob) is None
        clock.offset += timedelta(seconds=61)  # alice went away: the lease runs out
        assert claim(bob) == number
        decided = alice.post(f"/review/cases/{number}/decision", json={"action": "confirm", "version": 0},
                             headers={"X-CSRF-Token": alice.cookies["gw_csrf"]})
        assert decided.status_code == 409 and decided.json()["holder"] == "bob"  # bob has it now
        decided = bob.post(f"/review/cases/{number}/decision",
                           json={"action": "reject", "reason": "duplicate", "version": 0},
                           headers={"X-CSRF-Token": bob.cookies["gw_csrf"]})
        assert decided.json()["review_status"] == "rejected"
        assert claim(alice) is None
    with server.client(server.key("reviewer")) as api:
        assert updated_before != api.get(f"/v1/cases/{number}").json()["updated_at"]  # the decision changed it


def test_leasing_is_not_a_change_the_case_system_sees(run_service, dataset_images) -> None:
    server = run_service()
    (number,) = queue_cases(server, dataset_images, 1)
    add_user(server, "alice")
    with server.client(server.key("reviewer")) as api:
        before = api.get(f"/v1/cases/{number}").json()["updated_at"]
        with httpx.Client(base_url=server.url) as alice:
            http_sign_in(alice, "alice")
            assert claim(alice) == number
        assert api.get(f"/v1/cases/{number}").json()["updated_at"] == before


def test_queue_order_and_filters(run_service, dataset_images) -> None:
    server = run_service()
    numbers = queue_cases(server, dataset_images, 3)  # scores 0.5, 0.53, 0.56; first seen in that order
    add_user(server, "alice")
    with httpx.Client(base_url=server.url) as alice:
        http_sign_in(alice, "alice")

        def first(skip: list[str] | None = None, **where) -> str | None:
            answer = alice.post("/review/next", json={"skip": skip or [], **where},
                                headers={"X-CSRF-Token": alice.cookies["gw_csrf"]})
            answer.raise_for_status()
            case = answer.json()["case"]
            return case["case_number"] if case else None

        assert first() == numbers[0]
        assert first(order="score") == numbers[2]
        assert first(min_score=0.52, order="oldest") == numbers[1]
        assert first(camera="cam-001") == numbers[1]
        assert first(violation="street_stall") is None
        assert first(grid="370202001001001") == numbers[0]
        assert first(since="2026-11-24T00:00:00Z") is None
        assert first(since="2026-11-23T00:00:00Z", until="2026-11-23T23:59:59Z") == numbers[0]
        assert first(skip=numbers) is None
