"""Re-check (核查): after the case system reports a case handled, the camera looks again.
Real photos through the shipped model, a real service on SQLite, a signed-webhook case
system on loopback."""

from __future__ import annotations

import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from sqlalchemy import select

from detector.detections import Detections
from detector.files import REPO_ROOT
from detector.taxonomy import load_taxonomy
from serving.cameras import parse_cameras
from serving.cases import CasePolicy, CaseService
from serving.cases.recheck import RecheckWorker, due_time, look_at_place
from serving.evidence import EvidenceStore
from serving.settings import RecheckSettings, Settings
from serving.store.db import Database
from serving.store.models import AuditEntry, OutboxMessage
from serving.streams.readers import Frame
from tests.support.service import RunningService, pick_port, wait_for
from tests.support.shared_data import overflowing_bins, street_without
from tests.support.web import add_user, http_sign_in

BIN_RULE = {"violation": "bin_overflow", "zone_types": ["bin_area"], "min_score": 0.4, "dwell": 0}


@pytest.fixture(scope="module")
def shipped_detector():
    from detector.runtime import Detector

    return Detector(REPO_ROOT / "weights" / "gridwatch-int8.onnx", threads=1)


@pytest.fixture(scope="module")
def scenes(shipped_detector, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Two real frames per camera, (before, after): an overflowing bin, then a street without
    one (gone); an overflowing bin, then the same bin in brighter light (still there)."""
    root = tmp_path_factory.mktemp("scenes")
    (gone_before, _), (still_before, still_box) = overflowing_bins(shipped_detector, 2)
    height, width = cv2.imread(str(gone_before)).shape[:2]
    street = cv2.resize(cv2.imread(str(street_without(shipped_detector, "bin_overflow", (width, height)))),
                        (width, height), interpolation=cv2.INTER_AREA)
    brighter = cv2.convertScaleAbs(cv2.imread(str(still_before)), alpha=1.0, beta=12)
    found = shipped_detector.detect([brighter])[0]
    assert any(found.names[int(c)] == "bin_overflow" and s >= 0.4 for s, c in zip(found.scores, found.class_ids)), \
        "the brighter frame must still show the bin to the model"
    out = {}
    for name, before, after in (("gone", gone_before, street), ("still", still_before, brighter)):
        folder = root / name
        folder.mkdir()
        shutil.copy(before, folder / "0-before.jpg")
        cv2.imwrite(str(folder / "1-after.jpg"), after, [cv2.IMWRITE_JPEG_QUALITY, 95])
        out[name] = (folder / "0-before.jpg", folder / "1-after.jpg")
    return out


def camera_entry(camera_id: str, folder: Path, **extra) -> dict:
    return {"id": camera_id, "source": str(folder), "division": "370202", "grid": "370202001001001",
            "sample_every": 2, "tiled_static_checks": False,
            "zones": [{"name": "bins", "type": "bin_area", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
            "rules": [BIN_RULE], **extra}


def test_gone_closes_verified_and_still_there_reopens_reported_once(tmp_path, receiver, shipped_detector,
                                                                     scenes) -> None:
    receiver.start()
    cameras = parse_cameras({"cameras": [camera_entry("cam-gone", scenes["gone"][0].parent),
                                         camera_entry("cam-still", scenes["still"][0].parent)]},
                            tmp_path, taxonomy=load_taxonomy()).cameras
    settings = Settings(data_dir=tmp_path / "data", port=pick_port(), admin_key="gw_test_admin_key_0123456789",
                        webhook_url=receiver.url, webhook_secret=receiver.secret, delivery_backoff_s=0.05,
                        delivery_backoff_max_s=0.3, delivery_poll_s=0.05, auto_confirm={"bin_overflow": 0.3},
                        recheck={"delay_s": 0, "poll_s": 0.05})
    server = RunningService(settings, detector=shipped_detector, file_cameras=list(cameras))
    try:
        system = server.client(server.key("case_system"))

        def case_of(camera: str):
            items = system.get("/v1/cases", params={"camera": camera}).json()["items"]
            return items[0] if items else None

        before = {cam: wait_for(lambda cam=cam: case_of(cam)) for cam in ("cam-gone", "cam-still")}
        wait_for(lambda: {c["case_number"] for c in before.values()} <= set(receiver.reported()))
        for case in before.values():
            for status in ("dispatched", "handled"):
                response = system.post(f"/v1/cases/{case['case_number']}/status", json={"status": status})
                assert response.status_code == 200, response.text
        gone, still = before["cam-gone"]["case_number"], before["cam-still"]["case_number"]

        assert wait_for(lambda: case_of("cam-gone")["status"] == "closed")
        assert wait_for(lambda: case_of("cam-still")["status"] == "reopened")
        checks = {n: server.service.cases.rechecks_of(n) for n in (gone, still)}
        assert [r.state for r in checks[gone]] == ["verified"] and checks[gone][0].score is None
        assert [r.state for r in checks[still]] == ["reopened"] and checks[still][0].score >= 0.4

        def sent(number: str, event: str) -> list[dict]:
            return [b for b in receiver.received.values()
                    if b["event"] == event and b["case"]["case_number"] == number]

        wait_for(lambda: sent(gone, "case.verified") and sent(still, "case.reopened"))
        reopened = sent(still, "case.reopened")[0]["case"]
        verified = sent(gone, "case.verified")[0]["case"]
        assert reopened["status"] == "reopened" and reopened["reopened"] == 1
        assert verified["status"] == "closed"
        for body in (reopened, verified):  # the before and the after photo, both in the signed body
            assert {"original", "after", "after_annotated"} <= {e["kind"] for e in body["evidence"]}
        assert receiver.bad_signatures == 0

        # The after photo is the camera's second frame, as it saw it.
        after = next(e for e in verified["evidence"] if e["kind"] == "after")
        response = system.get(f"/v1/cases/{gone}/evidence/{after['id']}")
        assert response.status_code == 200
        stored = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
        assert np.array_equal(stored, cv2.imread(str(scenes["gone"][1])))

        # Reported once: nothing more is due, a second pass sends nothing, the outbox has one
        # message per outcome and the receiver one copy.
        assert server.service.rechecks.run_due(datetime.now(timezone.utc) + timedelta(days=1)) == []
        wait_for(lambda: all(m.state == "delivered" for m in outbox_rows(server.service.db)))
        events = [(m.event, m.case_id) for m in outbox_rows(server.service.db)]
        assert sum(e == "case.reopened" for e, _ in events) == 1
        assert sum(e == "case.verified" for e, _ in events) == 1
        assert len(sent(still, "case.reopened")) == 1 and len(sent(gone, "case.verified")) == 1
        with server.service.db.sessions() as session:
            actions = set(session.scalars(select(AuditEntry.action).where(AuditEntry.actor == "recheck")))
        assert {"recheck.planned", "recheck.verified", "recheck.reopened"} <= actions
        system.close()

        # Reviewers: the case page shows the same place before and after, side by side; the
        # dashboard counts verified and reopened cases.
        add_user(server, "rita")
        with httpx.Client(base_url=server.url) as page:
            assert http_sign_in(page, "rita").status_code in (200, 303)
            html = page.get(f"/review/cases/{still}").text
            assert 'id="recheck" data-state="reopened"' in html
            before_src = re.search(r'id="recheck-before" src="([^"]+)"', html).group(1)
            after_src = re.search(r'id="recheck-after" src="([^"]+)"', html).group(1)
            ids = {e["kind"]: e["id"] for e in reopened["evidence"]}
            assert before_src.endswith(f"/{ids['annotated']}") and after_src.endswith(f"/{ids['after_annotated']}")
            assert all(page.get(src).headers["content-type"].startswith("image/") for src in (before_src, after_src))
            counts = page.get("/dashboard/data").json()["rechecks"]
            assert (counts["verified"], counts["reopened"], counts["pending"]) == (1, 1, 0)
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'gridwatch_rechecks{state="verified"} 1.0' in metrics
        assert 'gridwatch_rechecks{state="reopened"} 1.0' in metrics
    finally:
        server.stop()


def outbox_rows(db) -> list[OutboxMessage]:
    with db.sessions() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def test_a_pending_recheck_survives_a_restart_and_waits_for_the_schedule(db_url, tmp_path, make_event,
                                                                         shipped_detector, scenes) -> None:
    """Handled in the evening: the re-check waits for the camera's morning window, is kept
    across a restart, and then reopens the case once."""
    (camera,) = parse_cameras({"cameras": [camera_entry(
        "cam-001", scenes["still"][0].parent,
        schedule=[{"days": "mon-sun", "from": "07:00", "to": "22:00", "tz": "Asia/Shanghai"}])]},
        tmp_path, taxonomy=load_taxonomy()).cameras
    box = overflowing_bins(shipped_detector, 2)[1][1]
    config = RecheckSettings(delay_s=600)

    def service(db: Database) -> CaseService:
        return CaseService(db, EvidenceStore(tmp_path / "ev"), load_taxonomy(),
                           CasePolicy(auto_confirm={"bin_overflow": 0.5}), public_url="http://gw.test",
                           recheck=config, cameras=lambda: {camera.id: camera})

    db = Database(db_url)
    cases = service(db)
    made = cases.ingest(*make_event(box=tuple(box), camera="cam-001"))
    cases.set_status(made.case_number, "handled")
    cases.set_status(made.case_number, "handled")  # a repeated report plans no second look
    (planned,) = cases.rechecks_of(made.case_number)
    db.close()

    db = Database(db_url)  # a restart
    cases = service(db)
    assert [r.id for r in cases.rechecks_of(made.case_number)] == [planned.id]
    frame = Frame("cam-001", datetime.now(timezone.utc), cv2.imread(str(scenes["still"][1])), 0)
    worker = RecheckWorker(cases, lambda: {camera.id: camera}, shipped_detector, lambda cam, timeout: frame,
                           load_taxonomy(), config)
    assert worker.run_due(planned.due_at - timedelta(seconds=1)) == []  # not due yet
    assert worker.run_due(planned.due_at) == [(made.case_number, "reopened")]
    assert worker.run_due(planned.due_at + timedelta(days=1)) == []
    assert cases.get(made.case_number).status == "reopened"
    reopens = [m for m in outbox_rows(db) if m.event == "case.reopened"]
    assert len(reopens) == 1 and reopens[0].idempotency_key.endswith(f"-v{cases.get(made.case_number).version}")
    db.close()


def test_due_time_waits_for_the_schedule_window() -> None:
    (camera,) = parse_cameras({"cameras": [{
        "id": "cam-1", "source": "rtsp://127.0.0.1/x", "division": "370202", "grid": "370202001001001",
        "schedule": [{"days": "mon-fri", "from": "07:00", "to": "22:00", "tz": "Asia/Shanghai"}]}]},
        Path(".")).cameras
    shanghai = timezone(timedelta(hours=8))
    # Monday 10:00 + 10 min: inside the window, due as it is.
    monday = datetime(2026, 11, 23, 10, 0, tzinfo=shanghai)
    assert due_time(monday, 600, camera) == monday + timedelta(minutes=10)
    # Monday 21:55 + 10 min = 22:05, after the window: Tuesday 07:00 Shanghai = Monday 23:00 UTC.
    late = datetime(2026, 11, 23, 21, 55, tzinfo=shanghai)
    assert due_time(late, 600, camera) == datetime(2026, 11, 23, 23, 0, tzinfo=timezone.utc)
    # Friday 21:55 + 10 min: the weekend is off, so Monday 07:00.
    friday = datetime(2026, 11, 27, 21, 55, tzinfo=shanghai)
    assert due_time(friday, 600, camera) == datetime(2026, 11, 30, 7, 0, tzinfo=shanghai)


def test_still_there_needs_the_class_the_score_and_the_place() -> None:
    found = Detections(xyxy=np.array([[100, 100, 200, 200], [400, 400, 500, 500], [110, 100, 210, 200]], np.float32),
                       scores=np.array([0.35, 0.9, 0.8], np.float32), class_ids=np.array([1, 1, 0]),
                       names={0: "person", 1: "bin_overflow"})
    bins = frozenset({"bin_overflow"})
    # The place [100,100,200,200]: the bin there scores 0.35 (IoU 1.0): below 0.4, gone.
    look = look_at_place(found, [100, 100, 200, 200], bins, 0.4, 0.1)
    assert (look.still_there, look.score, look.iou) == (False, 0.35, 1.0)
    assert look_at_place(found, [100, 100, 200, 200], bins, 0.3, 0.1).still_there
    # A person at the place is not a bin; a sure bin elsewhere is another place.
    assert not look_at_place(found, [110, 100, 210, 200], frozenset({"garbage_pile"}), 0.3, 0.1).still_there
    # [150,150,250,250] against the bin [100,100,200,200]: 2500 / (10000 + 10000 - 2500) = 0.1429.
    look = look_at_place(found, [150, 150, 250, 250], bins, 0.3, 0.1)
    assert look.still_there and look.iou == pytest.approx(0.1429, abs=1e-4)
    assert not look_at_place(found, [150, 150, 250, 250], bins, 0.3, 0.15).still_there
    assert look_at_place(found, None, bins, 0.5, 0.1).score == 0.9  # no box: anywhere in the frame


def test_a_look_that_cannot_be_made_is_retried_then_failed_and_closing_cancels(db_url, tmp_path, make_event,
                                                                                shipped_detector) -> None:
    cams = {c.id: c for c in parse_cameras({"cameras": [
        camera_entry(cam, tmp_path) for cam in ("cam-001", "cam-002")]}, tmp_path, taxonomy=load_taxonomy()).cameras}
    config = RecheckSettings(delay_s=0, retry_s=60, max_tries=2)
    db = Database(db_url)
    cases = CaseService(db, EvidenceStore(tmp_path / "ev"), load_taxonomy(), CasePolicy(), recheck=config,
                        cameras=lambda: cams)
    offline = cases.ingest(*make_event(event_id="e1", camera="cam-001")).case_number
    closed = cases.ingest(*make_event(event_id="e2", camera="cam-002")).case_number
    for number in (offline, closed):
        cases.set_status(number, "handled")
    cases.set_status(closed, "closed")  # the case system closed it itself: nothing to verify
    assert [r.state for r in cases.rechecks_of(closed)] == ["cancelled"]

    worker = RecheckWorker(cases, lambda: cams, shipped_detector, lambda cam, timeout: None, load_taxonomy(), config)
    now = datetime.now(timezone.utc) + timedelta(seconds=1)
    assert worker.run_due(now) == [(offline, "retry")]  # the camera gave no frame
    assert worker.run_due(now) == []  # not due again before retry_s
    assert worker.run_due(now + timedelta(seconds=60)) == [(offline, "failed")]
    (failed,) = cases.rechecks_of(offline)
    assert (failed.state, failed.attempts, failed.detail) == ("failed", 2, "no frame from the camera")
    assert cases.get(offline).status == "handled"  # left for a person; nothing was sent
    assert not [m for m in outbox_rows(db) if m.event in ("case.verified", "case.reopened")]
    db.close()
