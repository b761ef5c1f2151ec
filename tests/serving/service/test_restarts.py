"""Restarts and camera changes make no duplicate: a file camera without `start:` replayed by a
restarted service files the same event ids into the same cases, and a camera added, changed or
removed through the API leaves every other camera's stream, tracks and open events alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tests.support import streams as streaming
from tests.support.service import wait_for
from tests.support.shared_data import shared_available

ADMIN = "gw_test_admin_key_0123456789"


@pytest.fixture(scope="module")
def props(shared_detector):
    if not shared_available():
        pytest.skip("shared datasets or the COCO seed model are missing")
    return streaming.Props.load(shared_detector)


def bin_camera(camera_id: str, video: Path, **extra) -> dict:
    return {
        "id": camera_id, "source": str(video), "division": "370202", "grid": "370202001001001",
        "sample_every": 0.5, "static_check_every": 2, "tiled_static_checks": False,
        "zones": [{"name": "bins", "type": "bin_area", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
        "rules": [{"violation": "bin_overflow", "zone_types": ["bin_area"], "classes": ["fire hydrant"],
                   "min_score": 0.25, "dwell": 2}],
        **extra,
    }


def parsed(cameras: list[dict]) -> list:
    from detector.taxonomy import load_taxonomy
    from serving.cameras import parse_cameras

    return list(parse_cameras({"cameras": cameras}, Path("."), "test", load_taxonomy(None)).cameras)


def filed(service) -> tuple[list[tuple[str, str]], list[str]]:
    """(event id, type) of every transition filed, and the case numbers."""
    from serving.store.models import Case, CaseEvent

    with service.db.sessions() as session:
        events = sorted(tuple(row) for row in session.execute(select(CaseEvent.event_id, CaseEvent.event_type)))
        cases = sorted(session.scalars(select(Case.case_number)).all())
    return events, cases


def test_a_file_camera_without_start_replayed_after_a_restart_files_nothing_new(props, shared_detector,
                                                                                tmp_path) -> None:
    from serving.service import GridwatchService
    from serving.settings import Settings

    timeline = streaming.Timeline(props, duration=12, fps=4).add(
        streaming.Placement("bin", 170, 1.0, 10.0, foot=(320, 340)))
    video = streaming.write_video(tmp_path / "no-creation-time.mp4", timeline)  # no recorded start
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN)
    cameras = parsed([bin_camera("cam-file", video)])
    runs = []
    for _ in range(2):  # the second run is the restart: the same file replayed from its start
        service = GridwatchService(settings, file_cameras=cameras, detector=shared_detector)
        service.start()
        assert service.cameras.pipeline.wait(120)
        runs.append(filed(service))
        service.stop()
    (events, cases), (events_again, cases_again) = runs
    assert ("opened" in {t for _, t in events}) and len(cases) == 1  # the footage is what we think
    assert events_again == events and cases_again == cases


def test_a_camera_added_changed_or_removed_through_the_api_touches_no_other_camera(props, shared_detector,
                                                                                   tmp_path) -> None:
    from serving.service import GridwatchService
    from serving.settings import Settings
    from serving.store.models import CaseEvent

    standing = streaming.Timeline(props, duration=8, fps=4).add(
        streaming.Placement("bin", 170, 0.0, 8.0, foot=(320, 340)))
    looped = streaming.write_video(tmp_path / "standing.mp4", standing)
    other = streaming.write_video(tmp_path / "other.mp4", streaming.Timeline(props, duration=4, fps=4))
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN, media_roots=[tmp_path])
    service = GridwatchService(settings, file_cameras=parsed([bin_camera("cam-a", looped, loop=True)]),
                               detector=shared_detector)
    service.start()
    try:
        pipeline = service.cameras.pipeline

        def untouched_events(kind: str) -> list[str]:
            with service.db.sessions() as session:
                return sorted(session.scalars(select(CaseEvent.event_id).where(
                    CaseEvent.event_id.like("cam-a-%"), CaseEvent.event_type == kind)).all())

        opened = wait_for(lambda: untouched_events("opened"), timeout=60)
        runtime = pipeline.runtimes["cam-a"]

        service.cameras.add(bin_camera("cam-b", other), actor="test")
        assert wait_for(lambda: "cam-b" in pipeline.runtimes, timeout=10)
        service.cameras.add(bin_camera("cam-b", other, sample_every=1.0), replace=True, actor="test")
        service.cameras.remove("cam-b", actor="test")
        frames = pipeline.stats["frames"]
        assert wait_for(lambda: pipeline.stats["frames"] > frames + 20, timeout=60)  # cam-a reads on

        assert service.cameras.pipeline is pipeline and pipeline.runtimes["cam-a"] is runtime
        assert "cam-b" not in pipeline.runtimes
        # No close and no reopening: the open event goes on.
        assert untouched_events("opened") == opened and untouched_events("closed") == []
    finally:
        service.stop()
