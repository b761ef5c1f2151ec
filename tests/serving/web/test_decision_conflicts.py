"""Decisions over HTTP (issue #26 items 4, 5, 7; #29 items 2 and 12): the API and the page
answer a conflicting decision with 409 and who holds the case, re-decide and undo are their
own audited routes, decisions are rate-limited per person, event boxes lie inside their
frame, and the audit views page and filter so nothing is pushed out of sight."""

from __future__ import annotations

import csv
import io

import cv2
import httpx
from sqlalchemy import select

from tests.support.service import event_json, push
from tests.support.web import add_user, http_sign_in, queue_cases


def page_post(http: httpx.Client, url: str, body: dict) -> httpx.Response:
    return http.post(url, json=body, headers={"X-CSRF-Token": http.cookies["gw_csrf"]})


def test_api_and_page_decisions_conflict_with_who_holds_the_case(run_service, dataset_images) -> None:
    server = run_service()
    first, second = queue_cases(server, dataset_images, 2)
    add_user(server, "alice")
    with server.client(server.key("reviewer")) as api, httpx.Client(base_url=server.url) as alice:
        http_sign_in(alice, "alice")
        leased = page_post(alice, "/review/next", {})
        assert leased.json()["case"]["case_number"] == first and leased.json()["case"]["version"] == 0
        # A reviewer key cannot decide a case leased to someone on the page.
        taken = api.post(f"/v1/cases/{first}/review", json={"action": "reject", "reason": "false_alarm"})
        assert taken.status_code == 409
        assert taken.json()["holder"] == "alice" and taken.json()["version"] == 0
        # The page always names the version.
        assert page_post(alice, f"/review/cases/{first}/decision", {"action": "confirm"}).status_code == 422
        done = page_post(alice, f"/review/cases/{first}/decision", {"action": "confirm", "version": 0})
        assert done.status_code == 200 and done.json()["version"] == 1
        # A second plain decision, from the page (another tab) or the API, is a 409.
        again = page_post(alice, f"/review/cases/{first}/decision", {"action": "reject", "reason": "false_alarm",
                                                                      "version": 0})
        assert again.status_code == 409 and again.json()["holder"] == "alice"
        flip = api.post(f"/v1/cases/{first}/review", json={"action": "reject", "reason": "false_alarm"})
        assert flip.status_code == 409 and flip.json() == {**flip.json(), "holder": "alice", "version": 1}
        # A stale version through the API is a 409 too; a missing one is accepted (older clients).
        assert api.post(f"/v1/cases/{second}/review", json={"action": "confirm", "version": 5}).status_code == 409
        # Correcting to the kind the case already has is refused.
        same = api.post(f"/v1/cases/{second}/review", json={"action": "correct", "violation": "bin_overflow"})
        assert same.status_code == 422 and "already is bin_overflow" in same.json()["detail"]
        # Re-decide: explicit, with a reason, on the version seen; from the page and the API.
        assert api.post(f"/v1/cases/{first}/redecide", json={"action": "reject", "version": 1}).status_code == 422
        redecided = page_post(alice, f"/review/cases/{first}/redecide",
                              {"action": "reject", "reason": "false_alarm", "version": 1, "why": "a shadow"})
        assert redecided.status_code == 200 and redecided.json()["review_status"] == "rejected"
        stale = api.post(f"/v1/cases/{first}/redecide", json={"action": "confirm", "version": 1, "why": "no"})
        assert stale.status_code == 409 and stale.json()["version"] == 2
        # Undo from the page's stack: the re-decision is taken back, audited.
        undone = page_post(alice, f"/review/cases/{first}/undo", {"version": 2})
        assert undone.status_code == 200 and undone.json()["review_status"] == "confirmed"
        assert page_post(alice, f"/review/cases/{first}/undo", {"version": 3}).status_code == 409  # nothing left
    from serving.audit import entries

    actions = [e.action for e in reversed(entries(server.service.db, target=f"case:{first}"))]
    assert actions == ["review.confirm", "review.redecide", "review.undo"]
    with server.service.db.sessions() as session:
        from serving.store.models import OutboxMessage

        events = session.scalars(select(OutboxMessage.event).order_by(OutboxMessage.id)).all()
    assert events == ["case.reported", "case.retracted", "case.updated"]


def test_decisions_are_rate_limited_per_user(run_service, dataset_images) -> None:
    server = run_service(review_max_per_min=2)
    numbers = queue_cases(server, dataset_images, 3)
    with server.client(server.key("reviewer")) as api:
        for number in numbers[:2]:
            assert api.post(f"/v1/cases/{number}/review", json={"action": "confirm"}).status_code == 200
        limited = api.post(f"/v1/cases/{numbers[2]}/review", json={"action": "confirm"})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert server.service.cases.get(numbers[2]).review_status == "pending"


def test_event_boxes_lie_inside_their_frame(run_service, dataset_images) -> None:
    server = run_service()
    image = dataset_images[0]
    height, width = cv2.imread(str(image)).shape[:2]
    with server.client(server.key("camera")) as camera:
        for i, box in enumerate(([0, 0, 1e308, 1e308], [0, 0, float("inf"), 10], [0, 0, 1e12, 1e12])):
            for frame in (None, image):
                refused = push(camera, event_json(f"absurd-{i}", box=box), frame)
                assert refused.status_code == 422 and "box" in refused.json()["detail"], (box, refused.text)
        outside = push(camera, event_json("outside", box=[width + 5, 0, width + 90, 40]), image)
        assert outside.status_code == 422
        clipped = push(camera, event_json("wide", box=[-30, 20, width + 500, height + 2]), image)
        assert clipped.status_code == 200, clipped.text
    case = server.service.cases.get(clipped.json()["case_number"])
    assert case.box == [0.0, 20.0, float(width), float(height)]


def test_audit_views_page_and_filter_so_nothing_hides(run_service, dataset_images) -> None:
    server = run_service(review_max_per_min=0)
    add_user(server, "root", role="admin")
    add_user(server, "mallory")
    from serving.accounts import disable_user

    disable_user(server.service.db, "mallory", actor="root")  # the entry a flood would push away
    numbers = queue_cases(server, dataset_images, 3)
    with server.client(server.key("reviewer")) as api:
        api.post(f"/v1/cases/{numbers[0]}/review", json={"action": "confirm"})
        for i in range(120):  # a flood of re-decisions on one case
            version = server.service.cases.get(numbers[0]).version
            action = "reject" if i % 2 == 0 else "confirm"
            answer = api.post(f"/v1/cases/{numbers[0]}/redecide",
                              json={"action": action, "why": f"flip {i}", "version": version,
                                    **({"reason": "false_alarm"} if action == "reject" else {})})
            assert answer.status_code == 200, answer.text
    with httpx.Client(base_url=server.url) as admin:
        http_sign_in(admin, "root")
        newest = admin.get("/admin/audit")
        assert newest.status_code == 200 and "user.disable" not in newest.text and 'id="audit-older"' in newest.text
        # Paged: following "older" reaches the first entries.
        url, pages = "/admin/audit", 0
        while 'id="audit-older"' in (page := admin.get(url)).text:
            url = page.text.split('id="audit-older"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
            pages += 1
        assert pages >= 1 and 'data-action="user.disable"' in page.text
        # Filtered: by action, by actor, by case; the CSV holds all the filter selects.
        found = admin.get("/admin/audit", params={"action": "user.disable"})
        assert found.text.count('data-action="user.disable"') == 1
        assert 'data-action="review.redecide"' not in admin.get("/admin/audit", params={"actor": "root"}).text
        by_case = admin.get("/admin/audit", params={"case": numbers[0], "action": "review.*", "format": "csv"})
        rows = list(csv.DictReader(io.StringIO(by_case.text)))
        assert len(rows) == 121 and {r["target"] for r in rows} == {f"case:{numbers[0]}"}
        assert [r["action"] for r in rows][-1] == "review.confirm"
        assert admin.get("/admin/audit", params={"since": "2999-01-01T00:00"}).text.count("<tr data-action") == 0
    # The API: the same filters, paged by cursor.
    with server.client(server.admin_key) as api:
        first = api.get("/v1/audit", params={"action": "review.*", "limit": 100}).json()
        assert len(first["items"]) == 100 and first["next_cursor"]
        rest = api.get("/v1/audit", params={"action": "review.*", "cursor": first["next_cursor"]}).json()
        assert len(rest["items"]) == 21 and rest["next_cursor"] is None
        assert [e["action"] for e in api.get("/v1/audit", params={"action": "user.disable"}).json()["items"]] == [
            "user.disable"]
        assert api.get("/v1/audit", params={"action": "review.*"}, headers={"Authorization": "Bearer nope"}
                       ).status_code == 401

