"""A camera handed to a new node drains first: the old worker stops the camera, what it had open
closes and is filed under its still-valid lease, then the lease moves. With a live camera (a
looped MJPEG stream on loopback), which cannot replay what a hand-off would throw away: 0 events
refused as fenced, 0 lost (every opened event closed), 0 filed twice."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.support.cluster import PrivatePostgres, ray_cluster
from tests.support.service import wait_for
from tests.support import streams as streaming
from tests.support.shared_data import shared_available

ray = pytest.importorskip("ray", reason="cluster mode needs Ray: pip install 'gridwatch[cluster]'")

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def live_camera(camera_id: str, url: str) -> dict:
    return {
        "id": camera_id, "source": url, "division": "370202", "grid": "370202001001001",
        "sample_every": 0.5, "static_check_every": 2, "tiled_static_checks": False,
        "zones": [{"name": "bins", "type": "bin_area", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
        "rules": [{"violation": "bin_overflow", "zone_types": ["bin_area"], "classes": ["fire hydrant"],
                   "min_score": 0.25, "dwell": 2}],
    }


def transitions(service) -> list[tuple[str, str]]:
    from serving.store.models import CaseEvent

    with service.db.sessions() as session:
        return [tuple(row) for row in session.execute(select(CaseEvent.event_id, CaseEvent.event_type))]


def test_a_live_camera_handed_to_a_new_node_loses_and_duplicates_nothing(test_model, shared_detector,
                                                                          tmp_path) -> None:
    if not shared_available():
        pytest.skip("shared datasets or the COCO seed model are missing")
    from detector.taxonomy import load_taxonomy
    from serving.cameras import parse_cameras
    from serving.service import GridwatchService
    from serving.settings import Settings

    try:
        postgres = PrivatePostgres().create()
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"PostgreSQL server not available: {exc}")
    stream = streaming.standing_bin_stream(shared_detector, duration=600)  # longer than the test: live
    made, _ = ray_cluster(worker_nodes=1)
    service = None
    try:
        cameras = parse_cameras({"cameras": [live_camera(f"cam-live-{i}", stream.url) for i in range(2)]},
                                tmp_path, "test", load_taxonomy(None)).cameras
        settings = Settings(data_dir=tmp_path / "data", database_url=postgres.url, model=test_model, threads=1,
                            admin_key="gw_test_admin_key_0123456789", ray_address=made.address,
                            cluster_heartbeat_s=0.5, cluster_lease_timeout_s=6.0, cluster_max_moves=1)
        service = GridwatchService(settings, file_cameras=list(cameras))
        service.start()
        # Both cameras see the bin and have an event open on the only worker.
        wait_for(lambda: sum(t == "opened" for _, t in transitions(service)) == 2, timeout=180)

        made.add_node(num_cpus=1)

        def moved():
            status = service.coordinator.status()
            up = [w for w in status["workers"] if w["state"] == "up" and w["cameras"]]
            return len(up) == 2 and not status["handing_off"] and status

        wait_for(moved, timeout=180)
        # The camera that moved closed its open event on the old worker, filed under that
        # worker's lease; and the new worker sees the bin again.
        wait_for(lambda: sum(t == "opened" for _, t in transitions(service)) == 3, timeout=120)
        assert sum(t == "closed" for _, t in transitions(service)) == 1
        assert service.counters["events_fenced"] == 0
    finally:
        if service is not None:
            service.stop()  # every camera stops: what is open closes and is filed
        ray.shutdown()
        made.shutdown()
        stream.stop()
    try:
        filed = transitions(service)
        opened = {e for e, t in filed if t == "opened"}
        closed = [e for e, t in filed if t == "closed"]
        assert len(opened) == 3 and sorted(closed) == sorted(opened)  # none lost: each closed, once
        assert service.counters["events_fenced"] == 0 and service.counters["event_failures"] == 0
        # Every event a worker handed over was filed once: none refused, none twice.
        assert len(filed) == len(set(filed)) == service.coordinator.counters["events_taken"]
    finally:
        postgres.remove()
