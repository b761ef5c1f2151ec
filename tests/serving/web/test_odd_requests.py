"""Odd but possible requests to the pages and the API get a clear 4xx, never a 500: row ids
past what the database holds, days outside the calendar a datetime can shift, a NUL in a
query, and key names that would read differently from what they are."""

from __future__ import annotations

import httpx

from tests.support.web import add_user, http_sign_in

TOO_BIG = "99999999999999999999999"  # past SQLite's and PostgreSQL's integers


def test_odd_ids_days_and_characters_are_refused_clearly(run_service) -> None:
    server = run_service()
    add_user(server, "ada", "admin")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http_sign_in(http, "ada").status_code == 303
        token = http.cookies["gw_csrf"]
        json_headers = {"X-CSRF-Token": token}
        for method, path, extra in (
            ("GET", f"/review/labelling/{TOO_BIG}/frame", {}),
            ("GET", "/review/labelling/0/frame", {}),
            ("POST", f"/review/labelling/{TOO_BIG}/save", {"json": {"boxes": []}, "headers": json_headers}),
            ("POST", f"/review/labelling/{TOO_BIG}/skip", {"headers": json_headers}),
            ("POST", "/review/labelling/next", {"json": {"skip": [2**70]}, "headers": json_headers}),
            ("POST", "/review/labelling/leases", {"json": {"items": [-(2**70)]}, "headers": json_headers}),
            ("POST", "/review/leases/release", {"data": {"items": TOO_BIG, "csrf_token": token}}),
            ("POST", f"/admin/keys/{TOO_BIG}/revoke", {"data": {"csrf_token": token}}),
            ("GET", f"/admin/audit?before={TOO_BIG}", {}),
            ("GET", f"/admin/audit?format=csv&before={TOO_BIG}", {}),
            ("GET", f"/review/history?before={TOO_BIG}", {}),
            ("GET", "/dashboard/evaluation?since=0001-01-01", {}),
            ("GET", "/dashboard/evaluation?until=9999-12-31", {}),
            ("GET", "/review/history?since=0001-01-01", {}),
        ):
            answer = http.request(method, path, **extra)
            assert 400 <= answer.status_code < 500, (method, path, answer.status_code, answer.text[:300])
        # The admin page's key form refuses what the API refuses: a NUL, a direction override.
        for name in ("k\x00", "admin\u202e"):
            answer = http.post("/admin/keys", data={"name": name, "role": "camera", "csrf_token": token})
            assert answer.status_code == 422 and "control or formatting" in answer.text, answer.text[:300]
    from serving.auth import list_keys

    assert [k.name for k in list_keys(server.service.db) if k.name.startswith(("k", "admin\u202e"))] == []
    with server.client(server.key("admin")) as api:
        refused = api.post("/v1/keys", json={"name": "camera\u202egnp.1", "role": "camera"})
        assert refused.status_code == 422 and "control or formatting" in refused.text
        # A NUL in any query parameter (a sealed original's audited reason, the audit's actor filter).
        for path in ("/v1/audit?actor=a%00b", "/v1/cases?camera=x%00"):
            answer = api.get(path)
            assert answer.status_code == 422 and "NUL" in answer.text, (path, answer.text)


def test_an_event_from_a_clock_far_ahead_is_refused_and_files_nothing(run_service) -> None:
    from datetime import datetime, timedelta, timezone

    from tests.support.service import event_json, push

    server = run_service()
    now = datetime.now(timezone.utc)
    with server.client(server.key("camera")) as http:
        ahead = event_json(event_id="ahead", first_seen=now.isoformat(), last_seen="2999-01-01T00:00:00+00:00")
        refused = push(http, ahead)
        assert refused.status_code == 422 and "check the sending box's clock" in refused.text
        # Hours ahead (a time zone written wrong) is still taken.
        slipped = event_json(event_id="slipped", first_seen=now.isoformat(),
                             last_seen=(now + timedelta(hours=14)).isoformat())
        assert push(http, slipped).status_code == 200
    with server.client(server.key("reviewer")) as http:
        (case,) = http.get("/v1/cases").json()["items"]
    assert case["last_seen"] == (now + timedelta(hours=14)).isoformat()
