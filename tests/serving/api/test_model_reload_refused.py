"""Issue #27: a POST /v1/models/reload refused by the request's schema (a path for a file
name, a body that is not the reload's) is logged and audited like a reload the service
refused; the answer stays the schema's 422."""

from __future__ import annotations

import logging

from sqlalchemy import select

from serving.store.models import AuditEntry


def refusals(server) -> list[AuditEntry]:
    with server.service.db.sessions() as session:
        return session.scalars(select(AuditEntry).where(AuditEntry.action == "model.reload_refused")
                               .order_by(AuditEntry.id)).all()


def test_schema_refused_reloads_are_logged_and_audited(run_service, caplog) -> None:
    server = run_service()
    served = server.service.detector.info
    with caplog.at_level(logging.WARNING, logger="gridwatch.service"), server.client(server.admin_key) as admin:
        traversal = admin.post("/v1/models/reload", json={"file": "../../etc/passwd.onnx"})
        assert traversal.status_code == 422
        assert traversal.json()["detail"][0]["loc"] == ["body", "file"]
        unknown_field = admin.post("/v1/models/reload", json={"model": "x.onnx"})
        assert unknown_field.status_code == 422
        broken = admin.post("/v1/models/reload", content=b'{"file": ', headers={"Content-Type": "application/json"})
        assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "json_invalid"
    rows = refusals(server)
    assert len(rows) == 3
    assert {r.actor for r in rows} == {"admin (environment)"} and {r.actor_kind for r in rows} == {"key"}
    assert {r.target for r in rows} == {f"model:{served.path.name}"}
    assert all(r.after["refused"].startswith("invalid request: body") for r in rows)
    assert "../../etc/passwd.onnx" in rows[0].after["requested"]
    assert "model" in rows[1].after["refused"]  # the field it named
    assert rows[0].before == {"version": served.version, "file": served.path.name}
    lines = [r.getMessage() for r in caplog.records if "model reload by" in r.getMessage()]
    assert len(lines) == 3 and all("refused" in line for line in lines)
    assert server.service.detector.version == served.version  # nothing was swapped
