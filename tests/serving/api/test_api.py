"""The HTTP API on a real uvicorn server: keys and roles, upload limits, events to signed
webhooks, case listing and paging, evidence download, reviews, status callbacks, cameras."""

from __future__ import annotations

import hashlib
import json

import cv2
import pytest

from tests.support.service import event_json, push, wait_for
from tests.support.streams import png_header

def test_keys_and_roles(run_service) -> None:
    server = run_service()
    with server.client() as anonymous:
        response = anonymous.get("/v1/cases")
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/readyz").json()["ready"] is True
    with server.client("gw_wrong") as wrong:
        assert wrong.get("/v1/cases").status_code == 401
    reviewer, case_system, camera = server.key("reviewer"), server.key("case_system"), server.key("camera")
    with server.client(reviewer) as http:
        assert http.get("/v1/cases").status_code == 200
        assert http.post("/v1/cameras", json={"id": "x"}).status_code == 403
        assert http.post("/v1/keys", json={"name": "n", "role": "admin"}).status_code == 403
        assert push(http, event_json()).status_code == 403
    with server.client(camera) as http:
        assert http.get("/v1/cases").status_code == 403
    with server.client(case_system) as http:
        assert http.post("/v1/cases/GW1-1/review", json={"action": "confirm"}).status_code == 403
    # Keys are stored hashed: the database never holds one in clear.
    from sqlalchemy import select

    from serving.store.models import ApiKey

    with server.service.db.sessions() as session:
        hashes = set(session.scalars(select(ApiKey.key_hash)))
    assert hashlib.sha256(reviewer.encode()).hexdigest() in hashes and reviewer not in hashes
    with server.client(server.admin_key) as admin:
        created = admin.post("/v1/keys", json={"name": "temp", "role": "reviewer"}).json()
        assert admin.delete(f"/v1/keys/{created['id']}").status_code == 204
    with server.client(created["key"]) as revoked:
        assert revoked.get("/v1/cases").status_code == 401


def test_detect_and_upload_limits(run_service, dataset_images, tmp_path) -> None:
    server = run_service(upload_max_bytes=2 * 1024 * 1024, upload_max_pixels=20_000_000)
    with server.client(server.key("camera")) as http:
        image = dataset_images[0]
        ok = http.post("/v1/detect", files={"file": (image.name, image.read_bytes(), "image/jpeg")})
        assert ok.status_code == 200
        body = ok.json()
        height, width = cv2.imread(str(image)).shape[:2]
        assert (body["width"], body["height"]) == (width, height)
        assert all({"class_name", "score", "box"} <= set(d) for d in body["detections"])
        # The same picture as PNG.
        png = cv2.imencode(".png", cv2.imread(str(image)))[1].tobytes()
        assert http.post("/v1/detect", files={"file": ("a.png", png, "image/png")}).status_code == 200

        def status(content: bytes, media_type="image/jpeg", name="x.jpg") -> int:
            return http.post("/v1/detect", files={"file": (name, content, media_type)}).status_code

        assert status(b"hello, not an image", "text/plain", "a.txt") == 415
        assert status(b"GIF89a" + b"\0" * 100) == 415
        assert status(image.read_bytes(), "application/pdf") == 415
        assert status(b"") == 422
        assert status(png_header(60000, 60000), "image/png", "bomb.png") == 413
        assert status(image.read_bytes()[:200]) == 422  # header only: undecodable
        assert status(b"\xff\xd8\xff" + b"\0" * (2 * 1024 * 1024 + 10)) == 413
        assert http.post("/v1/detect", data={"other": "x"}).status_code == 422
        assert http.post("/v1/detect", content=b"raw", headers={"Content-Type": "image/jpeg"}).status_code == 422
        big = http.post("/v1/detect", content=b"0" * (4 * 1024 * 1024), headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert big.status_code == 413
        assert big.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("auto", [True, False], ids=["auto-confirm", "reviewed"])
def test_events_to_signed_webhook_and_pull(db_url, run_service, receiver, dataset_images, auto) -> None:
    receiver.start()
    server = run_service(db_url, webhook_url=receiver.url, webhook_secret=receiver.secret,
                         auto_confirm={"bin_overflow": 0.7} if auto else {}, public_url="http://gw.example")
    camera, reviewer, case_system = server.key("camera"), server.key("reviewer"), server.key("case_system")
    with server.client(camera) as http:
        first = push(http, event_json("e1"), dataset_images[0])
        assert first.status_code == 200 and first.json()["action"] == "created"
        number = first.json()["case_number"]
        assert push(http, event_json("e1", type="updated", end_s=150, score=0.9), dataset_images[1]).json()["action"] == "joined"
        assert push(http, event_json("e1", type="updated", end_s=150, score=0.9)).json()["action"] == "duplicate"
        other = push(http, event_json("e9", camera="cam-002", score=0.5), dataset_images[2]).json()["case_number"]
        bad = push(http, event_json("e2", matter_code="37020206010"))
        assert bad.status_code == 422 and "matter_code" in bad.json()["detail"]
        assert push(http, {**event_json("e3"), "grid": "short"}).status_code == 422
        assert http.post("/v1/events", data={"event": "{not json"}).status_code == 422
    with server.client(reviewer) as http:
        if not auto:
            assert receiver.received == {}
            assert http.post(f"/v1/cases/{number}/review", json={"action": "confirm", "note": "seen"}).status_code == 200
        assert http.post(f"/v1/cases/{number}/review", json={"action": "correct"}).status_code == 422
        assert http.post("/v1/cases/GW00000000-999999/review", json={"action": "confirm"}).status_code == 404
        case = http.get(f"/v1/cases/{number}").json()
        assert case["occurrences"] == 1 and case["matter_code"] == "37020206042" and case["source"] == "video"
        kinds = sorted(e["kind"] for e in case["evidence"])
        assert kinds == ["annotated", "annotated", "crop", "crop", "original", "original"]
        original = next(e for e in case["evidence"] if e["kind"] == "original")
        download = http.get(original["url"].replace("http://gw.example", ""))
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == original["sha256"]
        assert download.content == dataset_images[0].read_bytes()
        assert http.get(f"/v1/cases/{number}/evidence/999999").status_code == 404

    wait_for(lambda: receiver.received)
    (key, body), = receiver.received.items()
    assert key == f"{number}-v1" and body["event"] == "case.reported" and receiver.bad_signatures == 0
    assert body["case"]["evidence"][0]["url"].startswith(f"http://gw.example/v1/cases/{number}/evidence/")
    with server.client() as http:
        wait_for(lambda: 'gridwatch_outbox_messages{state="delivered"} 1.0' in http.get("/metrics").text)
        metrics = http.get("/metrics").text
        assert 'gridwatch_cases{state="active"} 2.0' in metrics
        assert "gridwatch_events_total 4.0" in metrics  # the rejected pushes never reached the case layer
        assert "gridwatch_delivery_lag_seconds 0.0" in metrics

    with server.client(case_system) as http:
        listed = http.get("/v1/cases").json()["items"]
        assert [c["case_number"] for c in listed] == [number]  # only what was delivered
        assert http.get(f"/v1/cases/{other}").status_code == 404
        since = listed[0]["updated_at"]
        assert http.get("/v1/cases", params={"since": since}).json()["items"] == []
        assert http.post(f"/v1/cases/{number}/status", json={"status": "dispatched", "external_id": "QD-77"}).status_code == 200
        assert http.post(f"/v1/cases/{number}/status", json={"status": "bogus"}).status_code == 422
        changed = http.get("/v1/cases", params={"since": since}).json()["items"]
        assert [(c["case_number"], c["status"], c["external_id"]) for c in changed] == [(number, "dispatched", "QD-77")]
        assert http.post(f"/v1/cases/{number}/status", json={"status": "closed"}).json()["status"] == "closed"
        assert http.post(f"/v1/cases/{number}/status", json={"status": "handled"}).status_code == 409


def test_case_list_filters_and_pages(run_service) -> None:
    server = run_service()
    with server.client(server.key("camera")) as http:
        for i in range(7):
            assert push(http, event_json(f"p{i}", camera=f"cam-{i % 2}", box=(i * 50, 0, i * 50 + 40, 40))).status_code == 200
    with server.client(server.key("reviewer")) as http:
        seen, cursor = [], None
        while True:
            page = http.get("/v1/cases", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
            seen += [c["case_number"] for c in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 7 == len(set(seen))
        assert len(http.get("/v1/cases", params={"camera": "cam-1"}).json()["items"]) == 3
        assert http.get("/v1/cases", params={"review_status": "confirmed"}).json()["items"] == []
        assert http.get("/v1/cases", params={"cursor": "bm9wZQ"}).status_code == 422
        assert http.get("/v1/cases", params={"limit": 0}).status_code == 422
        assert http.get("/v1/cases", params={"since": "9999-12-31T23:59:59-12:00"}).status_code in (200, 422)
        assert http.get("/v1/cases", params={"camera": "a\x00b"}).status_code == 422


def test_cameras_crud_with_health(run_service, tmp_path) -> None:
    server = run_service()
    camera = {"id": "cam-dead", "source": "rtsp://127.0.0.1:9/none", "division": "370202", "grid": "370202001001001",
              "zones": [{"name": "walk", "type": "sidewalk", "polygon": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}],
              "rules": [{"violation": "street_stall", "zone_types": ["sidewalk"], "dwell": 10}]}
    with server.client(server.admin_key) as http:
        created = http.post("/v1/cameras", json=camera)
        assert created.status_code == 201, created.text
        assert http.post("/v1/cameras", json=camera).status_code == 409
        bad = http.post("/v1/cameras", json={**camera, "id": "cam-bad", "division": "12"})
        assert bad.status_code == 422 and "division" in bad.json()["detail"]
        unknown = http.post("/v1/cameras", json={**camera, "id": "cam-x", "rules": [{"violation": "nope", "zone_types": ["sidewalk"]}]})
        assert unknown.status_code == 422 and "nope" in unknown.json()["detail"]
        # A dead camera reports its health and does not stop the API.
        health = wait_for(lambda: http.get("/v1/cameras/cam-dead").json()["health"], timeout=20)
        assert health["connected"] is False and health["tiled_check_waiting_s"] is None  # no frame, no check due
        assert health["tiled_checked_at"] is None
        assert [c["id"] for c in http.get("/v1/cameras").json()] == ["cam-dead"]
        metrics = http.get("/metrics").text
        assert "gridwatch_camera_connected{camera=\"cam-dead\"} 0.0" in metrics
        assert "gridwatch_tiled_checks_waiting 0.0" in metrics and "gridwatch_tiled_checks_missed_total 0.0" in metrics
        replaced = http.put("/v1/cameras/cam-dead", json={**camera, "sample_every": 5})
        assert replaced.status_code == 200 and replaced.json()["config"]["sample_every"] == 5
        assert http.put("/v1/cameras/cam-dead", json={**camera, "id": "other"}).status_code == 422
        assert http.delete("/v1/cameras/cam-dead").status_code == 204
        assert http.get("/v1/cameras/cam-dead").status_code == 404
        assert http.delete("/v1/cameras/cam-dead").status_code == 404
    from serving.audit import entries

    trail = entries(server.service.db, target="camera:cam-dead")
    assert [(e.actor, e.action) for e in reversed(trail)] == [
        ("admin (environment)", "camera.add"), ("admin (environment)", "camera.add_refused"),  # the second POST: 409
        ("admin (environment)", "camera.replace"), ("admin (environment)", "camera.remove")]
    assert trail[0].before["sample_every"] == 5 and trail[0].after is None


BAD_EVENTS = [
    {"box": [0, 0, 1e308, float("inf")]},
    {"score": float("nan")},
    {"dwell_s": -1},
    {"zone": "bins\x00"},
    {"location": {"lat": 91, "lon": 0}},
    {"first_seen": "0001-01-01T00:00:00+14:00"},
    {"first_seen": "not a time"},
    {"event_id": "x" * 500},
    {"track_id": 2**63},
    {"type": "exploded"},
    {"violation": "no_such_thing", "matter_code": "37020299999"},
]


def test_malformed_events_are_refused_cleanly(db_url, run_service) -> None:
    server = run_service(db_url)
    with server.client(server.admin_key) as http:
        for bad in BAD_EVENTS:
            response = http.post("/v1/events", data={"event": json.dumps({**event_json("m1"), **bad})})
            assert response.status_code == 422, (bad, response.text)
        # JSON nested past Python's recursion limit: a clear 422, not a 500.
        for depth in (1_000, 50_000):
            nested = http.post("/v1/events", data={"event": "[" * depth + "]" * depth})
            assert nested.status_code == 422 and "invalid event" in nested.json()["detail"]
        assert http.get("/v1/cases").json()["items"] == []


def test_start_logs_how_each_camera_rule_reaches_the_case_system(run_service, caplog) -> None:
    server = run_service(auto_confirm={"bin_overflow": 0.5})
    camera = {"id": "cam-route", "source": "rtsp://127.0.0.1:9/none", "division": "370202", "grid": "370202001001001",
              "zones": [{"name": "walk", "type": "sidewalk", "polygon": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}],
              "rules": [{"violation": "street_stall", "zone_types": ["sidewalk"]},
                        {"violation": "bin_overflow", "zone_types": ["sidewalk"]}]}
    with server.client(server.admin_key) as http:
        assert http.post("/v1/cameras", json=camera).status_code == 201
    with caplog.at_level("INFO", logger="gridwatch.service"):
        server.service.log_delivery_routes()
    lines = [r.getMessage() for r in caplog.records if r.name == "gridwatch.service"]
    assert any(line.startswith("camera cam-route, street_stall: review") and "never pushed" in line for line in lines)
    assert any(line.startswith("camera cam-route, bin_overflow: auto-confirm at score >= 0.5") for line in lines)


def test_truncated_frame_on_events_is_refused_and_stores_nothing(run_service, dataset_images) -> None:
    """/v1/detect refused a truncated JPEG (422) while /v1/events took it, made a case and
    left an evidence file: both refuse it now, before anything is written."""
    server = run_service()
    truncated = dataset_images[0].read_bytes()
    truncated = truncated[: len(truncated) // 2]
    with server.client(server.key("camera")) as http:
        files = {"frame": ("cut.jpg", truncated, "image/jpeg")}
        response = http.post("/v1/events", data={"event": json.dumps(event_json())}, files=files)
        assert response.status_code == 422 and "decoded" in response.json()["detail"]
        assert http.post("/v1/detect", files={"file": ("cut.jpg", truncated, "image/jpeg")}).status_code == 422
    assert server.service.cases.counts["cases_created"] == 0
    assert not [p for p in server.service.evidence.root.rglob("*") if p.is_file()]


def test_one_camera_id_pattern_and_file_sources_only_under_media_roots(run_service, tmp_path) -> None:
    server = run_service(media_roots=[tmp_path / "media"])
    (tmp_path / "media" / "frames").mkdir(parents=True)
    camera = {"id": "cam-file", "source": str(tmp_path / "media" / "frames"), "division": "370202",
              "grid": "370202001001001",
              "zones": [{"name": "walk", "type": "sidewalk", "polygon": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}],
              "rules": [{"violation": "street_stall", "zone_types": ["sidewalk"]}]}
    with server.client(server.admin_key) as http:
        # An id the API accepts can be read and deleted: one pattern, one length, no "..".
        for bad_id in ("x" * 129, "..", ".", ".hidden", "a/b"):
            assert http.post("/v1/cameras", json={**camera, "id": bad_id}).status_code == 422, bad_id
        longest = "c" * 128
        assert http.post("/v1/cameras", json={**camera, "id": longest}).status_code == 201
        assert http.delete(f"/v1/cameras/{longest}").status_code == 204
        # File sources: inside a media root only, symlinks and ".." resolved first.
        (tmp_path / "media" / "escape").symlink_to("/etc")
        for source in ("/etc/shadow", str(tmp_path / "media" / ".." / "elsewhere"), str(tmp_path / "media" / "escape" / "hostname")):
            refused = http.post("/v1/cameras", json={**camera, "source": source})
            assert refused.status_code == 422 and "media root" in refused.json()["detail"], source
        assert http.post("/v1/cameras", json=camera).status_code == 201


@pytest.mark.parametrize("change, why", [
    ({"grid": "370202abc001001"}, "grid"),  # lower case: camera configs refuse it
    ({"division": "110101"}, "division"),  # contradicts the grid and the matter code
    ({"grid": "110101001001001", "division": ""}, "division"),  # a grid outside the matter code's division
    ({"first_seen": "2026-11-23T09:00:00"}, "offset"),  # naive: which time zone?
    ({"first_seen": 1795424400}, "ISO-8601"),  # a bare epoch: seconds or milliseconds?
])
def test_events_are_validated_like_camera_configs(run_service, change, why) -> None:
    server = run_service()
    with server.client(server.key("camera")) as http:
        response = push(http, event_json(**change))
    assert response.status_code == 422 and why in response.text, response.text
