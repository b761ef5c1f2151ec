"""End to end: a real MJPEG camera stream on loopback -> pipeline -> event -> case -> signed
webhook, with `gridwatch serve` SIGKILLed mid-stream and restarted: still one case, delivered
once. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest

from tests.support.service import ADMIN, wait_for, write_config

from tests.support import streams as streaming
from tests.support.shared_data import shared_available


@pytest.fixture(scope="module")
def bin_stream(shared_detector):
    if not shared_available():
        pytest.skip("shared datasets or the COCO seed model are missing")
    server = streaming.standing_bin_stream(shared_detector, duration=90)
    yield server
    server.stop()


@pytest.mark.slow
def test_stream_to_webhook_survives_sigkill(db_url, serve, free_port, receiver, bin_stream, tmp_path) -> None:
    receiver.start()
    camera = {
        "id": "cam-e2e", "source": bin_stream.url, "division": "370202", "grid": "370202001001001",
        "location": {"lat": 36.0671, "lon": 120.3826, "address": "Zhongshan Rd 1, Shinan"},
        "sample_every": 0.5, "static_check_every": 2,
        "zones": [{"name": "bins", "type": "bin_area", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
        "rules": [{"violation": "bin_overflow", "zone_types": ["bin_area"], "classes": ["fire hydrant"],
                   "min_score": 0.25, "dwell": 2, "auto_confirm_score": 0.25}],
    }
    # Beside it: a camera whose stream is dead and one whose entry is malformed. Clear
    # errors for both, and the good camera keeps working.
    dead = {**camera, "id": "cam-dead", "source": f"rtsp://127.0.0.1:{free_port + 1 if free_port < 65535 else 1}/none"}
    broken = {**camera, "id": "cam-broken", "division": "37"}
    config = write_config(tmp_path / "gridwatch.yaml", db_url, receiver, cameras=[camera, dead, broken],
                          auto_confirm={"bin_overflow": 0.25}, public_url="http://gw.example")
    headers = {"Authorization": f"Bearer {ADMIN}"}
    process = serve(free_port, config, env={"GRIDWATCH_ADMIN_KEY": ADMIN}).start()
    wait_for(lambda: receiver.reported(), timeout=60)
    (number,) = receiver.reported()
    body = next(b for b in receiver.received.values() if b["event"] == "case.reported")["case"]
    assert body["matter_code"] == "37020206042" and body["grid"] == "370202001001001" and body["camera"] == "cam-e2e"
    assert {e["kind"] for e in body["evidence"]} == {"original", "annotated", "crop"}
    health = httpx.get(f"{process.url}/v1/cameras/cam-e2e", headers=headers).json()["health"]
    assert health["connected"] is True
    assert httpx.get(f"{process.url}/v1/cameras/cam-dead", headers=headers).json()["health"]["connected"] is False
    assert httpx.get(f"{process.url}/v1/cameras/cam-broken", headers=headers).status_code == 404
    log = process.log.read_text()
    assert "cam-broken" in log and "division" in log

    process.kill()  # mid-stream: the open event never closes, nothing is flushed
    process = serve(free_port, config, env={"GRIDWATCH_ADMIN_KEY": ADMIN}).start()

    def rejoined():
        case = httpx.get(f"{process.url}/v1/cases/{number}", headers=headers).json()
        return case["occurrences"] >= 2 and case

    case = wait_for(rejoined, timeout=60)  # the restarted pipeline's new event joined the old case
    cases = httpx.get(f"{process.url}/v1/cases", headers=headers).json()["items"]
    assert [c["case_number"] for c in cases] == [number]  # and none from the dead camera
    assert process.terminate() == 0  # graceful: open events close into the case
    assert receiver.reported() == {number: 1}
    assert receiver.bad_signatures == 0
    assert case["review_status"] == "pending" and case["version"] == 1


def events_seen(process) -> float:
    for line in httpx.get(f"{process.url}/metrics").text.splitlines():
        if line.startswith("gridwatch_events_total "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.slow
def test_archived_footage_replayed_after_restart_files_nothing_twice(serve, free_port, receiver, shared_detector, tmp_path) -> None:
    if not shared_available():
        pytest.skip("shared datasets or the COCO seed model are missing")
    from datetime import datetime, timezone

    props = streaming.Props.load(shared_detector)
    timeline = streaming.Timeline(props, duration=24, fps=4).add(
        streaming.Placement("bin", 170, 2.0, 20.0, foot=(320, 340)))
    video = streaming.write_video(tmp_path / "cam-file.mp4", timeline,
                                  creation_time=datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc))
    receiver.start()
    camera = {
        "id": "cam-file", "source": str(video), "division": "370202", "grid": "370202001001001",
        "sample_every": 0.5, "static_check_every": 2,
        "zones": [{"name": "bins", "type": "bin_area", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
        "rules": [{"violation": "bin_overflow", "zone_types": ["bin_area"], "classes": ["fire hydrant"],
                   "min_score": 0.25, "dwell": 2, "auto_confirm_score": 0.25}],
    }
    config = write_config(tmp_path / "gridwatch.yaml", None, receiver, cameras=[camera],
                          auto_confirm={"bin_overflow": 0.25})
    headers = {"Authorization": f"Bearer {ADMIN}"}
    process = serve(free_port, config, env={"GRIDWATCH_ADMIN_KEY": ADMIN}).start()

    def ended():
        items = httpx.get(f"{process.url}/v1/cases", headers=headers).json()["items"]
        return items and all(c["state"] == "ended" for c in items) and items

    first = wait_for(ended, timeout=90)
    wait_for(lambda: receiver.reported(), timeout=30)
    seen = events_seen(process)
    assert process.terminate() == 0

    process = serve(free_port, config, env={"GRIDWATCH_ADMIN_KEY": ADMIN}).start()  # replays the file
    wait_for(lambda: events_seen(process) >= seen, timeout=90)
    again = httpx.get(f"{process.url}/v1/cases", headers=headers).json()["items"]
    assert [c["case_number"] for c in again] == [c["case_number"] for c in first]
    assert [len(c["evidence"]) for c in again] == [len(c["evidence"]) for c in first]
    assert not (tmp_path / "data" / "frames").exists()  # evidence is written once, into the case: nothing staged
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "data" / "evidence").rglob("*") if p.is_file()) == \
        sorted(e["kind"] for e in again[0]["evidence"])
    assert again[0]["first_seen"].startswith("2026-11-23T08:00")  # the footage's own clock
    assert receiver.reported() == {first[0]["case_number"]: 1}
    assert process.terminate() == 0
