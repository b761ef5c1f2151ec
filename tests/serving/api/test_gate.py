"""The front gate (serving.api.guard): the key is checked before any body is read, bodies
are counted as they stream (chunked ones too) and stopped at the limit, and concurrent
uploads are bounded. Each request here leaves its chunked body unfinished: an answer that
comes anyway proves the server did not wait to read (or spool) the whole body."""

from __future__ import annotations

import httpx

from tests.support.raw_http import open_chunked

MULTIPART = "multipart/form-data; boundary=gwboundary"
CHUNK = b"x" * 65536
# The start of a well-formed upload whose file part then runs on and on.
FILE_PART = (b'--gwboundary\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
             b"Content-Type: image/jpeg\r\n\r\n")


def test_no_key_is_refused_before_the_body_is_read(run_service) -> None:
    server = run_service()
    port = server.service.settings.port
    for path, content_type in (("/v1/keys", "application/json"), ("/v1/detect", MULTIPART)):
        request = open_chunked(port, path, content_type=content_type)
        request.send_chunks(CHUNK, 4)
        assert request.status() == 401, path
        request.close()
    request = open_chunked(port, "/v1/events", key="gw_not_a_key", content_type=MULTIPART)
    request.send_chunks(CHUNK, 1)
    assert request.status() == 401
    request.close()


def test_chunked_bodies_stop_at_the_limit(run_service) -> None:
    server = run_service(upload_max_bytes=1024 * 1024, json_max_bytes=64 * 1024)
    port, camera, admin = server.service.settings.port, server.key("camera"), server.admin_key
    upload = open_chunked(port, "/v1/detect", key=camera, content_type=MULTIPART)
    upload.send_chunks(FILE_PART, 1)
    sent = upload.send_chunks(CHUNK, 2048)  # 128 MiB offered, the limit is 2 MiB with framing
    assert upload.status() == 413
    # The server stopped reading at the limit: what got through beyond it is what the kernel's
    # socket buffers took (here up to 32 MiB received + 4 MiB sent), not the body.
    assert sent < 48 * 1024 * 1024
    upload.close()
    body = open_chunked(port, "/v1/keys", key=admin)
    body.send_chunks(CHUNK, 4)
    assert body.status() == 413
    body.close()
    with server.client(admin) as http:  # a declared length over the limit: refused up front
        response = http.post("/v1/keys", content=b"{" * (65 * 1024), headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and "detail" in response.json()


def test_concurrent_uploads_are_bounded(run_service, dataset_images) -> None:
    server = run_service(max_concurrent_uploads=1)
    port, camera = server.service.settings.port, server.key("camera")
    slow = open_chunked(port, "/v1/detect", key=camera, content_type=MULTIPART)
    slow.send_chunks(FILE_PART, 1)
    image = dataset_images[0]
    with server.client(camera) as http:
        def upload() -> httpx.Response:
            return http.post("/v1/detect", files={"file": (image.name, image.read_bytes(), "image/jpeg")})

        busy = upload()
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        slow.close()
        from tests.support.service import wait_for

        wait_for(lambda: upload().status_code == 200, timeout=10)


def test_security_headers_on_every_response(run_service) -> None:
    server = run_service()
    with server.client() as anonymous:
        responses = [anonymous.get("/healthz"), anonymous.get("/v1/cases"), anonymous.get("/nowhere"),
                     anonymous.get("/docs")]
    with server.client(server.admin_key) as admin:
        responses += [admin.get("/v1/cases"), admin.post("/v1/keys", json={"bad": 1})]
    for response in responses:
        assert response.headers["x-content-type-options"] == "nosniff", response.url
        assert response.headers["x-frame-options"] == "DENY" and response.headers["referrer-policy"] == "no-referrer"
    api = [r for r in responses if r.url.path != "/docs"]
    assert all(r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'" for r in api)
    assert all("unsafe-inline" not in r.headers.get("content-security-policy", "") for r in responses)


def test_rate_limit_per_key_on_detect_and_events(run_service, dataset_images) -> None:
    server = run_service(rate_limit_per_minute=6, rate_limit_burst=2)
    image = dataset_images[0]
    first, second = server.key("camera"), server.key("camera")
    with server.client(first) as http:
        def detect() -> httpx.Response:
            return http.post("/v1/detect", files={"file": (image.name, image.read_bytes(), "image/jpeg")})

        assert [detect().status_code for _ in range(2)] == [200, 200]
        limited = detect()
        assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 10
        assert http.post("/v1/events", data={"event": "{}"}).status_code == 429  # one budget per key
        assert http.get("/v1/cameras").status_code == 200  # cheap reads are not limited
    with server.client(second) as http:  # another key has its own budget
        assert http.post("/v1/detect", files={"file": (image.name, image.read_bytes(), "image/jpeg")}).status_code == 200


def test_key_rotation_keeps_both_keys_valid_during_the_overlap(run_service) -> None:
    import time

    server = run_service()
    with server.client(server.admin_key) as admin:
        old = admin.post("/v1/keys", json={"name": "edge box 7", "role": "camera"}).json()
        rotated = admin.post(f"/v1/keys/{old['id']}/rotate", json={"overlap_s": 2})
        assert rotated.status_code == 201, rotated.text
        new = rotated.json()
        assert (new["name"], new["role"]) == ("edge box 7", "camera") and new["key"] != old["key"]
        assert admin.post("/v1/keys/999999/rotate", json={}).status_code == 404

    def status(key: str) -> int:
        with server.client(key) as http:
            return http.get("/v1/cameras").status_code

    assert status(old["key"]) == status(new["key"]) == 200  # the overlap: both work
    time.sleep(2.5)
    assert status(old["key"]) == 401 and status(new["key"]) == 200
    with server.client(server.admin_key) as admin:  # an expired key cannot be rotated again
        assert admin.post(f"/v1/keys/{old['id']}/rotate", json={}).status_code == 404


def test_security_headers_on_an_internal_error(run_service, monkeypatch) -> None:
    """A 500 is answered by Starlette's outermost middleware, outside the gate."""
    server = run_service()

    def broken() -> dict:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.service, "readiness", broken)
    with server.client() as http:
        response = http.get("/readyz")
    assert response.status_code == 500 and response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
