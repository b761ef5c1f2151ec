"""Issue #26 (security round 2) on the API side: no upload slot or body byte before the
caller is known, stalled bodies cut off, a share of uploads kept for cameras; stream
passwords never shown (readyz, logs, /v1/cameras) nor stored; grid_map only from the media
roots, bounded, never quoted; one decode budget for every route that decodes; forwarded
headers only from trusted proxies; redirects that never name a host; who acted, by kind and id."""

from __future__ import annotations

import json
import logging
import socket

import httpx
import pytest

from tests.support.raw_http import open_chunked
from tests.support.service import event_json, push, wait_for

MULTIPART = "multipart/form-data; boundary=gwboundary"
FILE_PART = (b'--gwboundary\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
             b"Content-Type: image/jpeg\r\n\r\n")
CAMERA = {"division": "370202", "grid": "370202001001001",
          "zones": [{"name": "walk", "type": "sidewalk", "polygon": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}],
          "rules": [{"violation": "street_stall", "zone_types": ["sidewalk"]}]}


def stalled_multipart(port: int, path: str, *, key: str | None = None, declared_length: bool = False):
    """A multipart request whose headers and first bytes are sent, then nothing more."""
    if not declared_length:
        request = open_chunked(port, path, key=key, content_type=MULTIPART)
        request.send_chunks(FILE_PART, 1)
        return request.sock
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Type: {MULTIPART}",
            "Content-Length: 60000"]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + FILE_PART)
    return sock


def test_stalled_forms_to_login_and_admin_take_no_upload_slot(run_service, dataset_images) -> None:
    server = run_service()  # 8 upload slots
    port, camera = server.service.settings.port, server.key("camera")
    stalled = [stalled_multipart(port, "/login", declared_length=i % 2 == 0) for i in range(10)]
    stalled += [stalled_multipart(port, "/admin/users") for _ in range(3)]
    try:
        image = dataset_images[0]
        with server.client(camera) as http:
            detect = http.post("/v1/detect", files={"file": (image.name, image.read_bytes(), "image/jpeg")})
            assert detect.status_code == 200, detect.text
            event = push(http, event_json(event_id="slot-1"), image)
            assert event.status_code == 200, event.text
    finally:
        for sock in stalled:
            sock.close()


def test_unauthenticated_page_posts_are_refused_before_the_body(run_service) -> None:
    server = run_service()
    request = open_chunked(server.service.settings.port, "/admin/users", content_type=MULTIPART)
    request.send_chunks(b"x" * 65536, 4)
    assert request.status() == 401
    request.close()


def test_a_stalled_upload_is_cut_off_with_408_and_frees_its_slot(run_service, dataset_images) -> None:
    server = run_service(max_concurrent_uploads=1, body_timeout_s=1.0)
    port, camera = server.service.settings.port, server.key("camera")
    request = open_chunked(port, "/v1/detect", key=camera, content_type=MULTIPART)
    request.send_chunks(FILE_PART, 1)
    assert request.status(timeout=15) == 408
    request.close()
    image = dataset_images[0]
    with server.client(camera) as http:
        assert http.post("/v1/detect", files={"file": (image.name, image.read_bytes(), "image/jpeg")}).status_code == 200


def test_camera_keys_keep_a_share_of_the_upload_slots(run_service, dataset_images) -> None:
    server = run_service(max_concurrent_uploads=4)  # one slot kept for cameras
    port, camera, reviewer = server.service.settings.port, server.key("camera"), server.key("reviewer")
    held = [open_chunked(port, "/v1/detect", key=reviewer, content_type=MULTIPART) for _ in range(3)]
    for request in held:
        request.send_chunks(FILE_PART, 1)
    try:
        image = dataset_images[0]
        files = {"file": (image.name, image.read_bytes(), "image/jpeg")}
        # The three reviewer uploads in flight are all people may have at once...
        wait_for(lambda: httpx.post(f"{server.url}/v1/detect", files=files,
                                    headers={"Authorization": f"Bearer {reviewer}"}, timeout=60).status_code == 503,
                 timeout=90)
        # ...and a camera still gets through.
        with server.client(camera) as http:
            assert http.post("/v1/detect", files=files).status_code == 200
    finally:
        for request in held:
            request.close()


def test_stream_passwords_are_never_shown_logged_or_stored(run_service, monkeypatch, caplog) -> None:
    monkeypatch.setenv("CAMERA_TEST_GATE_PW", "S3cretPw")
    server = run_service()
    dead = "rtsp://admin:{}@127.0.0.1:9/stream"
    with server.client(server.admin_key) as admin:
        clear = admin.post("/v1/cameras", json={**CAMERA, "id": "cam-clear", "source": dead.format("S3cretPw")})
        assert clear.status_code == 422 and "environment variable" in clear.json()["detail"]
        assert "S3cretPw" not in clear.text
        # Only variables meant for cameras may be named: not the service's own secrets.
        own = admin.post("/v1/cameras", json={**CAMERA, "id": "cam-own", "source": dead.format("${GRIDWATCH_ADMIN_KEY}")})
        assert own.status_code == 422 and "CAMERA_" in own.json()["detail"]
        with caplog.at_level(logging.DEBUG):
            added = admin.post("/v1/cameras", json={**CAMERA, "id": "cam-gate",
                                                    "source": dead.format("${CAMERA_TEST_GATE_PW}")})
            assert added.status_code == 201, added.text
            # The stream is opened with the password (it fails: nothing listens on port 9).
            ready = wait_for(lambda: (r := httpx.get(f"{server.url}/readyz")).json()["checks"].get("camera:cam-gate")
                             and r, timeout=30)
        assert "S3cretPw" not in ready.text
        assert "S3cretPw" not in caplog.text
        shown = admin.get("/v1/cameras/cam-gate").json()
        assert shown["config"]["source"] == "rtsp://admin:${CAMERA_TEST_GATE_PW}@127.0.0.1:9/stream"
        assert "S3cretPw" not in json.dumps(shown)
    for role in ("reviewer", "camera"):
        with server.client(server.key(role)) as http:
            listed = http.get("/v1/cameras")
            assert listed.status_code == 200 and "source" not in listed.json()[0]["config"]
            assert "S3cretPw" not in listed.text and "127.0.0.1:9" not in listed.text
    from sqlalchemy import text

    with server.service.db.engine.connect() as conn:
        stored = " ".join(str(row) for row in conn.execute(text("SELECT config FROM cameras")))
        audited = " ".join(str(row) for row in conn.execute(text("SELECT after FROM audit_log")))
    assert "${CAMERA_TEST_GATE_PW}" in stored and "S3cretPw" not in stored + audited


def test_redact_masks_passwords_in_any_text() -> None:
    from serving.cameras.credentials import redact

    assert redact("rtsp://admin:S3cretPw@host/stream") == "rtsp://admin:***@host/stream"
    assert redact("cannot open 'rtsp://a:p@ss@10.0.0.1:554/x': refused") == "cannot open 'rtsp://a:***@10.0.0.1:554/x': refused"
    assert redact("http://cam/snap.jpg?user=a&password=hunter2") == "http://cam/snap.jpg?user=a&password=***"
    assert redact("rtsp://admin:${CAMERA_X}@host/s") == "rtsp://admin:${CAMERA_X}@host/s"
    assert redact("rtsp://host/stream") == "rtsp://host/stream"


def test_grid_map_only_from_media_roots_bounded_and_never_quoted(run_service, tmp_path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    server = run_service(media_roots=[media])
    secret = tmp_path / "secret.json"
    secret.write_text('{"features": [{"properties": {"code": "TOP-SECRET-VALUE"}}]}')
    inside = media / "not-geojson.txt"
    inside.write_text("password=TOP-SECRET-VALUE\n")
    coded = media / "coded.geojson"
    coded.write_text('{"features": [{"properties": {"code": "TOP-SECRET-VALUE"}}]}')
    coords = media / "coords.geojson"
    coords.write_text('{"features": [{"properties": {"code": "370202001001001"}, '
                      '"geometry": {"type": "Polygon", "coordinates": [[["TOP-SECRET-VALUE", 1]]]}}]}')
    huge = media / "huge.geojson"
    with huge.open("wb") as f:  # sparse: over the limit without writing it
        f.truncate(17 * 1024 * 1024)
    located = {**CAMERA, "source": "rtsp://127.0.0.1:9/s", "location": {"lat": 36.06, "lon": 120.38}}
    located.pop("grid")
    with server.client(server.admin_key) as http:
        for path, why in ((secret, "media root"), (inside, "not a GeoJSON"), (coded, "grid code"),
                          (coords, "numbers"), (huge, "limit")):
            refused = http.post("/v1/cameras", json={**located, "id": "cam-map", "grid_map": str(path)})
            assert refused.status_code == 422 and why in refused.json()["detail"], refused.text
            assert "TOP-SECRET" not in refused.text


def test_the_decode_budget_is_held_until_an_event_frame_is_stored(run_service, dataset_images) -> None:
    from PIL import Image

    server = run_service()
    decoder = server.server.config.app.state.decoder
    seen: list[int] = []
    ingest = server.service.ingest

    def watched_ingest(event, evidence):
        seen.append(decoder.budget.in_use)  # while the frame's evidence is written
        return ingest(event, evidence)

    server.service.ingest = watched_ingest
    image = dataset_images[0]
    width, height = Image.open(image).size
    with server.client(server.key("camera")) as http:
        assert push(http, event_json(event_id="budget-1"), image).status_code == 200
    assert seen and seen[0] >= width * height * 6.5
    wait_for(lambda: decoder.budget.in_use == 0, timeout=10)  # all given back once the request is done


def test_the_decode_budget_bounds_what_is_held_at_once() -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from serving.api.uploads import DecodeBudget

    budget = DecodeBudget(1000)
    inside, most = [0], [0]

    async def use() -> None:
        await budget.acquire(400)
        inside[0] += 400
        most[0] = max(most[0], inside[0])
        await asyncio.sleep(0.01)
        inside[0] -= 400
        await budget.release(400)

    async def main() -> None:
        await asyncio.gather(*(use() for _ in range(12)))

    # Its own thread: a Playwright page earlier in the same test process keeps an event loop
    # running in the main thread, where asyncio.run refuses to start another.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, main()).result()
    assert most[0] == 800 and budget.peak == 800 and budget.in_use == 0


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    from serving.api.guard import client_address, parse_networks

    trusted = parse_networks(("10.0.0.0/24",))
    assert client_address("127.0.0.1", "203.0.113.9", ()) == "127.0.0.1"
    assert client_address("127.0.0.1", "203.0.113.9", trusted) == "127.0.0.1"
    assert client_address("10.0.0.5", "203.0.113.9", trusted) == "203.0.113.9"
    # The left part is the client's to invent: the nearest untrusted hop counts.
    assert client_address("10.0.0.5", "1.1.1.1, 203.0.113.9, 10.0.0.7", trusted) == "203.0.113.9"
    with pytest.raises(ValueError, match="not an IP"):
        parse_networks(("proxy.example",))


def test_redirects_never_name_the_host(run_service) -> None:
    server = run_service()
    with httpx.Client(base_url=server.url) as http:
        for path in ("/review/", "/", "/review"):
            response = http.get(path, headers={"Host": "evil.example"})
            assert response.status_code in (303, 307), path
            assert "evil.example" not in response.headers["location"] and response.headers["location"].startswith("/")


def test_audit_names_the_principal_kind_and_id(run_service) -> None:
    from serving.accounts import add_user
    from serving.audit import entries

    server = run_service()
    add_user(server.service.db, "rita", "admin", "correct horse 42", actor="test")
    with server.client(server.admin_key) as admin:
        made = admin.post("/v1/keys", json={"name": "rita", "role": "admin"}).json()
    with server.client(made["key"]) as key_named_rita:
        assert key_named_rita.post("/v1/keys", json={"name": "edge", "role": "camera"}).status_code == 201
    with server.client(server.key("reviewer")) as reviewer:
        for _ in range(3):  # audited once a minute per key and route, not once per try
            assert reviewer.post("/v1/models/reload").status_code == 403
        assert reviewer.post("/v1/cameras", json={"id": "x"}).status_code == 403
    records = entries(server.service.db)
    by_key = next(r for r in records if r.action == "key.create" and r.after["name"] == "edge")
    assert (by_key.actor, by_key.actor_kind, by_key.actor_id) == ("rita", "key", str(made["id"]))
    refused = [r for r in records if r.action == "access.refused"]
    assert sorted(r.target for r in refused) == ["route:POST /v1/cameras", "route:POST /v1/models/reload"]
    assert all(r.actor_kind == "key" and r.actor_id for r in refused)


def test_fault_reasons_mask_stream_passwords(caplog) -> None:
    from serving.health import Faults

    faults = Faults()
    with caplog.at_level(logging.WARNING, logger="gridwatch.health"):
        faults.enter("camera:x", "cannot open rtsp://admin:S3cretPw@127.0.0.1/stream")
    assert faults.current()["camera:x"].startswith("cannot open rtsp://admin:***@127.0.0.1/stream")
    assert "S3cretPw" not in caplog.text


def test_source_references_are_filled_from_camera_variables_only(monkeypatch) -> None:
    from serving.cameras.credentials import CredentialError, expand

    monkeypatch.setenv("CAMERA_GATE_PW", "p@ss:w/rd")
    assert expand("rtsp://admin:${CAMERA_GATE_PW}@host/s") == "rtsp://admin:p%40ss%3Aw%2Frd@host/s"
    with pytest.raises(CredentialError, match="not set"):
        expand("rtsp://admin:${CAMERA_MISSING}@host/s")
    monkeypatch.setenv("GRIDWATCH_WEBHOOK_SECRET", "hidden")
    with pytest.raises(CredentialError, match="CAMERA_") as refused:
        expand("rtsp://admin:${GRIDWATCH_WEBHOOK_SECRET}@host/s")
    assert "hidden" not in str(refused.value)


def test_log_redaction_wraps_a_factory_another_library_installed(caplog) -> None:
    """Ray (imported by cluster mode and its tests) installs a log-record factory of its own;
    passwords must still be masked behind it."""
    from serving.cameras.credentials import install_log_redaction

    previous = logging.getLogRecordFactory()

    class LibraryRecord(logging.LogRecord):
        pass

    try:
        logging.setLogRecordFactory(LibraryRecord)
        install_log_redaction()
        with caplog.at_level(logging.WARNING):
            logging.getLogger("gridwatch.test").warning("stream lost (%s)", "rtsp://admin:S3cretPw@127.0.0.1/s")
        assert "S3cretPw" not in caplog.text and "rtsp://admin:***@127.0.0.1/s" in caplog.text
        assert isinstance(caplog.records[-1], LibraryRecord)
    finally:
        logging.setLogRecordFactory(previous)
