"""Accounts and the page's guards over HTTP: sign-in, sessions that end, CSRF, login
throttling, roles on pages and API routes, the audit log and its CSV, `gridwatch users`."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest

from tests.support.service import MovableClock
from tests.support.web import PASSWORD, add_user, http_sign_in, queue_cases


def test_sign_in_roles_and_csrf(run_service, db_url) -> None:
    server = run_service(db_url)
    add_user(server, "rita")
    add_user(server, "adam", "admin")
    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.get("/").headers["location"] == "/login"
        assert anonymous.get("/review").headers["location"] == "/login"
        page = anonymous.get("/login")
        assert page.status_code == 200 and 'name="csrf_token"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        # The login form without its token.
        assert anonymous.post("/login", data={"username": "rita", "password": PASSWORD}).status_code == 403
    with httpx.Client(base_url=server.url) as reviewer:
        signed = http_sign_in(reviewer, "rita")
        assert signed.status_code == 303 and signed.headers["location"] == "/review"
        cookie = signed.headers.get_list("set-cookie")
        session_cookie = next(c for c in cookie if c.startswith("gw_session="))
        assert "HttpOnly" in session_cookie and "SameSite=strict" in session_cookie
        assert reviewer.get("/").headers["location"] == "/review"
        assert reviewer.get("/review").status_code == 200
        assert reviewer.get("/dashboard/data").json()["backlog"]["pending"] == 0
        assert reviewer.get("/admin").status_code == 403
        assert reviewer.get("/admin/audit").status_code == 403
        assert reviewer.post("/admin/model/reload", data={"csrf_token": reviewer.cookies["gw_csrf"]}).status_code == 403
        assert reviewer.post("/admin/users", data={"name": "x", "role": "admin", "password": "12345678",
                                                   "csrf_token": reviewer.cookies["gw_csrf"]}).status_code == 403
        # State-changing requests from the page need the token.
        assert reviewer.post("/review/next", json={}).status_code == 403
        assert reviewer.post("/review/next", json={}, headers={"X-CSRF-Token": "forged"}).status_code == 403
        assert reviewer.post("/review/next", json={},
                             headers={"X-CSRF-Token": reviewer.cookies["gw_csrf"]}).json() == {"case": None}
        assert reviewer.post("/logout", data={}).status_code == 403
        assert reviewer.post("/logout", data={"csrf_token": reviewer.cookies["gw_csrf"]}).status_code == 303
        assert reviewer.get("/review").headers["location"] == "/login"
    # API keys work as before; a reviewer key still may not use the admin routes.
    with server.client(server.key("reviewer")) as http:
        assert http.post("/v1/keys", json={"name": "n", "role": "admin"}).status_code == 403
    with httpx.Client(base_url=server.url) as admin:
        http_sign_in(admin, "adam")
        token = admin.cookies["gw_csrf"]
        assert admin.get("/admin").status_code == 200
        created = admin.post("/admin/keys", data={"name": "edge box", "role": "camera", "csrf_token": token})
        assert created.status_code == 200 and 'id="new-key"' in created.text
        added = admin.post("/admin/users", data={"name": "newbie", "role": "reviewer", "password": "long enough",
                                                  "csrf_token": token})
        assert added.status_code == 303
        assert admin.post("/admin/users/newbie/disable", data={"csrf_token": token}).status_code == 303
        # Cameras from the admin page: added, refused with the reason, removed; all audited.
        entry = "id: cam-web\nsource: rtsp://127.0.0.1:9/none\ndivision: '370202'\ngrid: '370202001001001'\n"
        assert admin.post("/admin/cameras", data={"entry": entry, "csrf_token": token}).status_code == 303
        assert "cam-web" in admin.get("/admin").text
        refused = admin.post("/admin/cameras", data={"entry": "id: x\n", "csrf_token": token})
        assert refused.status_code == 422 and 'id="camera-error"' in refused.text and "source" in refused.text
        assert admin.post("/admin/cameras/cam-web/remove", data={"csrf_token": token}).status_code == 303
        assert "cam-web" not in admin.get("/admin").text
        # The served model, loaded again from the admin page (after a promotion into weights/).
        assert 'id="model-version"' in admin.get("/admin").text
        assert admin.post("/admin/model/reload", data={"csrf_token": token}).status_code == 303
        exported = admin.get("/admin/audit?format=csv")
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert {(r["actor"], r["action"]) for r in rows} >= {
            ("adam", "key.create"), ("adam", "user.add"), ("adam", "user.disable"), ("test", "user.add"),
            ("adam", "model.reload"), ("adam", "camera.add"), ("adam", "camera.remove")}
    with httpx.Client(base_url=server.url) as disabled:
        assert http_sign_in(disabled, "newbie", "long enough").status_code == 401


def test_sessions_expire(run_service) -> None:
    # Time moves on the service's clock, which sessions expire on: sleeping past a short
    # session raced a loaded machine's sign-in and first page.
    clock = MovableClock()
    server = run_service(clock=clock, session_ttl_s=600.0)
    add_user(server, "rita")
    with httpx.Client(base_url=server.url) as http:
        http_sign_in(http, "rita")
        clock.offset += timedelta(seconds=590)
        assert http.get("/review").status_code == 200
        csrf = {"X-CSRF-Token": http.cookies["gw_csrf"]}
        assert http.post("/review/next", json={"skip": []}, headers=csrf).status_code == 200
        clock.offset += timedelta(seconds=20)
        assert http.get("/review").headers["location"] == "/login"
        expired = http.post("/review/next", json={"skip": []}, headers=csrf)
        assert expired.status_code == 401  # the gate no longer finds a session


def test_wrong_passwords_are_throttled(run_service) -> None:
    server = run_service()
    add_user(server, "rita")
    with httpx.Client(base_url=server.url) as http:
        for _ in range(5):
            assert http_sign_in(http, "rita", "wrong password").status_code == 401
        # The sixth try is refused even with the right password, for this user...
        refused = http_sign_in(http, "rita")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        # ...and from this address, whatever the name.
        add_user(server, "sam")
        assert http_sign_in(http, "sam").status_code == 429


def test_users_command(tmp_path) -> None:
    def users(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "serving.cli", "users", *args, "--data-dir", str(tmp_path)],
                              input=stdin, capture_output=True, text=True, timeout=60)

    # Listing a data dir no service ever ran in says so, rather than making an empty database there.
    missing = users("list")
    assert missing.returncode == 2 and "no gridwatch database at" in missing.stderr
    assert not (tmp_path / "gridwatch.db").exists()
    assert users("add", "alice", "--role", "reviewer", "--password-stdin", stdin="s3cret-pass\n").returncode == 0
    assert users("add", "alice", "--role", "reviewer", "--password-stdin", stdin="s3cret-pass\n").returncode == 1
    assert "at least 8" in users("add", "bob", "--role", "admin", "--password-stdin", stdin="short\n").stderr
    latin1 = subprocess.run([sys.executable, "-m", "serving.cli", "users", "add", "bob", "--role", "admin",
                             "--password-stdin", "--data-dir", str(tmp_path)], input=b"caf\xe9-latin-1\n",
                            capture_output=True, timeout=60)
    assert latin1.returncode == 1 and b"not UTF-8" in latin1.stderr
    assert users("disable", "alice").returncode == 0
    listed = users("list").stdout
    assert '"name": "alice"' in listed and '"disabled": true' in listed and "s3cret" not in listed
    from serving.store.db import Database
    from sqlalchemy import text

    db = Database(f"sqlite:///{tmp_path / 'gridwatch.db'}")
    try:
        with db.engine.connect() as conn:
            stored = conn.execute(text("SELECT password_hash FROM users")).scalar_one()
    finally:
        db.close()
    assert stored.startswith("$argon2id$")


@pytest.mark.parametrize("action", ["confirm", "reject"])
def test_api_review_still_works_and_is_audited(run_service, db_url, dataset_images, action) -> None:
    server = run_service(db_url)
    number = queue_cases(server, dataset_images, 1)[0]
    with server.client(server.key("reviewer")) as http:
        answer = http.post(f"/v1/cases/{number}/review", json={"action": action})
        assert answer.status_code == 200
    from serving.audit import entries

    (entry,) = entries(server.service.db, target=f"case:{number}")
    assert entry.action == f"review.{action}" and entry.actor == "test reviewer"
    assert entry.before["review_status"] == "pending"
