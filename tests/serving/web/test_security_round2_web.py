"""Issue #26 (security round 2) on the review page: the login limit holds under concurrent
guesses, forwarded addresses are believed only from trusted proxies, sign-in and sign-out
are audited with who did them, CSRF tokens are bound to the session, forms get small bodies."""

from __future__ import annotations

import threading

import httpx

from tests.support.raw_http import open_chunked
from tests.support.web import PASSWORD, add_user, http_sign_in


def test_concurrent_wrong_guesses_cannot_pass_the_login_limit(run_service) -> None:
    server = run_service(login_max_failures=5)
    add_user(server, "rita")
    clients = [httpx.Client(base_url=server.url, timeout=60) for _ in range(30)]
    for client in clients:
        client.get("/login")  # each its own pre-session and CSRF token
    start = threading.Barrier(len(clients))
    statuses: list[int] = []

    def guess(client: httpx.Client, i: int) -> None:
        start.wait()
        statuses.append(client.post("/login", data={"username": "rita", "password": f"wrong {i}",
                                                    "csrf_token": client.cookies["gw_csrf"]}).status_code)

    threads = [threading.Thread(target=guess, args=(c, i)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses.count(401) <= 5 and statuses.count(401) + statuses.count(429) == 30, statuses
    # The right password, after the guesses, is refused too.
    assert http_sign_in(clients[0], "rita").status_code == 429
    for client in clients:
        client.close()
    from serving.audit import entries

    records = entries(server.service.db, target="user:rita")
    assert sum(r.action == "user.sign_in_failed" for r in records) == statuses.count(401)
    locked = [r for r in records if r.action == "user.locked_out"]
    assert len(locked) == 1 and locked[0].actor_kind == "anonymous" and locked[0].actor_id == "127.0.0.1"


def test_a_locked_out_address_cannot_escape_by_naming_another(run_service) -> None:
    server = run_service(login_max_failures=2)
    for name in ("ann", "bob", "cat"):
        add_user(server, name)
    with httpx.Client(base_url=server.url) as http:
        for i, name in enumerate(("ann", "bob")):
            http.headers["X-Forwarded-For"] = f"198.51.100.{i}"
            assert http_sign_in(http, name, "wrong password").status_code == 401
        http.headers["X-Forwarded-For"] = "198.51.100.99"
        assert http_sign_in(http, "cat").status_code == 429
    # Behind a trusted proxy the forwarded address is the caller's.
    proxied = run_service(login_max_failures=2, trusted_proxies=["127.0.0.1"])
    for name in ("ann", "bob", "cat"):
        add_user(proxied, name)
    with httpx.Client(base_url=proxied.url) as http:
        for i, name in enumerate(("ann", "bob")):
            http.headers["X-Forwarded-For"] = f"198.51.100.{i}"
            assert http_sign_in(http, name, "wrong password").status_code == 401
        http.headers["X-Forwarded-For"] = "198.51.100.99"
        assert http_sign_in(http, "cat").status_code == 303


def test_sign_in_and_out_are_audited_with_the_principal(run_service) -> None:
    from serving.audit import entries

    server = run_service()
    rita = add_user(server, "rita", "admin")
    with httpx.Client(base_url=server.url) as http:
        assert http_sign_in(http, "rita", "wrong password").status_code == 401
        assert http_sign_in(http, "rita").status_code == 303
        token = http.cookies["gw_csrf"]
        assert http.post("/admin/cameras", data={"entry": "id: x\n", "csrf_token": token}).status_code == 422
        assert http.post("/logout", data={"csrf_token": token}).status_code == 303
    records = list(reversed(entries(server.service.db)))
    actions = [(r.action, r.actor, r.actor_kind) for r in records if r.action not in ("user.add", "key.create")]
    assert actions == [("user.sign_in_failed", rita, "anonymous"), ("user.sign_in", rita, "user"),
                       ("camera.add_refused", rita, "user"), ("user.sign_out", rita, "user")]
    user_id = next(r.actor_id for r in records if r.action == "user.sign_in")
    assert user_id and all(r.actor_id == user_id for r in records if r.actor_kind == "user")


def test_csrf_tokens_are_bound_to_the_session(run_service) -> None:
    server = run_service()
    add_user(server, "rita")
    add_user(server, "sam")
    with httpx.Client(base_url=server.url) as rita, httpx.Client(base_url=server.url) as sam:
        http_sign_in(rita, "rita")
        http_sign_in(sam, "sam")
        assert rita.cookies["gw_csrf"] != sam.cookies["gw_csrf"]
        # A cookie and a header that agree are not enough: the token must be this session's.
        rita.cookies.set("gw_csrf", "anything")
        assert rita.post("/review/next", json={}, headers={"X-CSRF-Token": "anything"}).status_code == 403
        assert rita.post("/review/next", json={}, headers={"X-CSRF-Token": sam.cookies["gw_csrf"]}).status_code == 403
        token = rita.get("/review").cookies["gw_csrf"]  # the page hands out the session's token again
        assert rita.post("/review/next", json={}, headers={"X-CSRF-Token": token}).status_code == 200
    # Before sign-in, too: a made-up pair does not sign anyone in.
    with httpx.Client(base_url=server.url) as anonymous:
        anonymous.get("/login")
        anonymous.cookies.set("gw_csrf", "anything")
        forged = anonymous.post("/login", data={"username": "rita", "password": PASSWORD, "csrf_token": "anything"})
        assert forged.status_code == 403


def test_form_bodies_are_small(run_service) -> None:
    server = run_service()
    port = server.service.settings.port
    with httpx.Client(base_url=server.url) as anonymous:
        big = anonymous.post("/login", content=b"username=" + b"x" * (100 * 1024),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert big.status_code == 413
    # A multipart body, well formed so far and unfinished: answered 413 once it passes 64 KiB (the
    # upload limit of /v1/, 21 MiB, would have the server wait for more). Its part starts first: a
    # body of bare bytes is malformed from its first chunk, and the form parser may answer 400 for
    # that before the second chunk arrives (seen once on a loaded CI machine).
    request = open_chunked(port, "/login", content_type="multipart/form-data; boundary=gwboundary")
    request.send_chunks(b'--gwboundary\r\nContent-Disposition: form-data; name="username"\r\n\r\n', 1)
    request.send_chunks(b"x" * 65536, 2)
    assert request.status() == 413
    request.close()
