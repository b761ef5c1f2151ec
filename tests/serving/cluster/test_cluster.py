"""Cluster mode on a real multi-node Ray cluster on this host (a head and two 1-CPU worker
nodes), a real PostgreSQL, and six file cameras made from real images, replayed at 4x real
time so that things happen mid-run:

- a worker node removed mid-run: its cameras go on elsewhere within 30 s, and the opened
  events and the cases equal those of the single-process run on the same footage;
- a worker that hangs (SIGSTOP, not dead) loses its leases; what it files after waking is
  refused (fencing number) and counted;
- the case store down for 20 s, then back: nothing lost.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.support.cluster import PrivatePostgres, ray_cluster, six_cameras
from tests.support.service import wait_for
from tests.support.shared_data import shared_available

ray = pytest.importorskip("ray", reason="cluster mode needs Ray: pip install 'gridwatch[cluster]'")

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def footage(tmp_path_factory, test_model):
    if not shared_available():
        pytest.skip("shared datasets or the COCO seed model are missing")
    from detector.runtime import Detector

    return six_cameras(tmp_path_factory.mktemp("footage"), Detector(test_model, threads=1))


def parsed(cameras: list[dict]) -> list:
    from detector.taxonomy import load_taxonomy
    from serving.cameras import parse_cameras

    return list(parse_cameras({"cameras": cameras}, Path("."), "test", load_taxonomy(None)).cameras)


def outcome(db_url: str) -> tuple[list[str], list[tuple]]:
    """The opened event ids and the cases, as the case store holds them."""
    from serving.store.db import Database
    from serving.store.models import Case, CaseEvent

    db = Database(db_url)
    try:
        with db.sessions() as session:
            opened = sorted(session.scalars(select(CaseEvent.event_id).where(CaseEvent.event_type == "opened")).all())
            cases = sorted((c.camera, c.violation, c.first_seen, c.last_seen, c.state, c.occurrences)
                           for c in session.scalars(select(Case)).all())
    finally:
        db.close()
    return opened, cases


@pytest.fixture(scope="module")
def single_process(footage, test_model, tmp_path_factory):
    """The same footage through `gridwatch serve` as one process, exactly as without a cluster."""
    from serving.service import GridwatchService
    from serving.settings import Settings

    data = tmp_path_factory.mktemp("single")
    settings = Settings(data_dir=data, model=test_model, threads=1, admin_key="gw_test_admin_key_0123456789")
    service = GridwatchService(settings, file_cameras=parsed(footage))
    service.start()
    assert service.cameras.pipeline.wait(600)
    service.stop()
    opened, cases = outcome(settings.resolved_database_url)
    assert len(cases) == 6 and len(opened) == 6  # one bin per camera: the footage is what we think
    return opened, cases


@pytest.fixture
def postgres():
    try:
        pg = PrivatePostgres().create()
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"PostgreSQL server not available: {exc}")
    yield pg
    pg.remove()


@pytest.fixture
def cluster():
    made, nodes = ray_cluster(worker_nodes=2)
    yield made, nodes
    ray.shutdown()
    made.shutdown()


def cluster_service(cluster, postgres, footage, test_model, tmp_path, **overrides):
    from serving.service import GridwatchService
    from serving.settings import Settings

    values = dict(data_dir=tmp_path / "cluster", database_url=postgres.url, model=test_model, threads=1,
                  admin_key="gw_test_admin_key_0123456789", ray_address=cluster[0].address,
                  cluster_replay_speed=4.0, cluster_heartbeat_s=0.5, cluster_lease_timeout_s=6.0)
    values.update(overrides)
    service = GridwatchService(Settings(**values), file_cameras=parsed(footage))
    service.start()
    return service


def placed(service) -> dict[str, dict]:
    """Workers that are up and hold cameras, by worker id, once all six cameras are placed."""
    status = service.coordinator.status()
    up = {w["worker"]: w for w in status["workers"] if w["state"] == "up" and w["cameras"]}
    held = sorted(c for w in up.values() for c in w["cameras"])
    return up if held == [f"cam-{i}" for i in range(6)] else {}


def finished(service) -> bool:
    health = service.cameras.health()
    return len(health) == 6 and all(h.get("state") == "finished" for h in health.values()) \
        and not service.coordinator.status()["unplaced"] \
        and all(w["queue_depth"] == 0 for w in service.coordinator.status()["workers"] if w["state"] == "up")


def cases_of(service, cameras) -> int:
    from serving.store.models import Case

    with service.db.sessions() as session:
        return len(session.scalars(select(Case).where(Case.camera.in_(cameras))).all())


def test_worker_node_killed_mid_run_loses_and_duplicates_nothing(cluster, postgres, footage, test_model,
                                                                 single_process, tmp_path) -> None:
    made, nodes = cluster
    service = cluster_service(cluster, postgres, footage, test_model, tmp_path)
    try:
        workers = wait_for(lambda: len(placed(service)) == 2 and placed(service), timeout=120)
        victim = next(iter(workers.values()))
        survivor = next(w for w in workers.values() if w is not victim)
        # Mid-run: the victim has filed a case, and its cameras are not at their end.
        wait_for(lambda: cases_of(service, victim["cameras"]) >= 1, timeout=120)
        assert any(service.cameras.health()[c]["state"] != "finished" for c in victim["cameras"])
        node = next(n for n in nodes if n.node_id.startswith(victim["node"]))
        removed_at = time.monotonic()
        made.remove_node(node)

        def moved():
            owners = {c: w["worker"] for w in service.coordinator.status()["workers"] if w["state"] == "up"
                      for c in w["cameras"]}
            return all(owners.get(c) == survivor["worker"] for c in victim["cameras"])

        wait_for(moved, timeout=30)  # the bound: started elsewhere within 30 s
        moved_after = time.monotonic() - removed_at
        wait_for(lambda: finished(service), timeout=300)
        status = service.coordinator.status()
    finally:
        service.stop()
    opened, cases = outcome(postgres.url)
    expected_opened, expected_cases = single_process
    assert opened == expected_opened  # 0 lost, 0 duplicated (case_events is unique per transition)
    assert cases == expected_cases
    assert status["counters"]["cameras_moved"] >= len(victim["cameras"])
    print(f"victim cameras running on the survivor {moved_after:.1f} s after the node was removed")


def test_hung_worker_loses_its_leases_and_its_late_events_are_refused(cluster, postgres, footage, test_model,
                                                                      single_process, tmp_path) -> None:
    service = cluster_service(cluster, postgres, footage, test_model, tmp_path)
    try:
        workers = wait_for(lambda: len(placed(service)) == 2 and placed(service), timeout=120)
        hung = next(iter(workers.values()))
        other = next(w for w in workers.values() if w is not hung)
        # It has an event open (a case filed from its cameras), so it has something to send late.
        wait_for(lambda: cases_of(service, hung["cameras"]) >= 1, timeout=120)
        pid = service.coordinator.workers[hung["worker"]].report.pid
        os.kill(pid, signal.SIGSTOP)  # not dead: stopped, its node and Ray see nothing wrong
        try:
            def moved():
                owners = {c: w["worker"] for w in service.coordinator.status()["workers"] if w["state"] == "up"
                          for c in w["cameras"]}
                return all(owners.get(c) == other["worker"] for c in hung["cameras"])

            wait_for(moved, timeout=30)
            state = {w["worker"]: w["state"] for w in service.coordinator.status()["workers"]}
            assert state[hung["worker"]] == "lost"
        finally:
            os.kill(pid, signal.SIGCONT)
        # Awake: what it still sends for its old cameras is refused at ingest, and counted.
        wait_for(lambda: service.counters["events_fenced"] >= 1, timeout=60)
        wait_for(lambda: finished(service), timeout=300)
        status = service.coordinator.status()
        metrics = service.metrics()
    finally:
        service.stop()
    back = next(w for w in status["workers"] if w["worker"] == hung["worker"])
    assert back["state"] == "up" and back["restarts"] == 1 and not set(back["cameras"]) & set(hung["cameras"])
    from serving.api.metrics import render

    text = render(metrics)
    assert f"gridwatch_events_fenced_total {float(service.counters['events_fenced'])}" in text
    assert 'gridwatch_worker_restarts_total{worker="%s"' % hung["worker"] in text
    assert outcome(postgres.url) == single_process  # nothing it sent late was filed twice or at all


def test_case_store_down_for_20_s_loses_nothing(cluster, postgres, footage, test_model, single_process,
                                                tmp_path) -> None:
    # Two events in flight at most: the outage backs up into the workers' queues.
    service = cluster_service(cluster, postgres, footage, test_model, tmp_path, cluster_events_in_flight=2)
    try:
        wait_for(lambda: len(placed(service)) == 2, timeout=120)
        wait_for(lambda: cases_of(service, [f"cam-{i}" for i in range(6)]) >= 1, timeout=120)
        postgres.stop()
        down_at = time.monotonic()
        try:
            # Back-pressure: the service stops taking, the workers' queues fill, their
            # pipelines wait; no event is dropped.
            wait_for(lambda: sum(w["queue_depth"] for w in service.coordinator.status()["workers"]) >= 2,
                     timeout=20)
            time.sleep(max(0.0, 20 - (time.monotonic() - down_at)))
            assert service.counters["event_failures"] >= 1
            assert not finished(service)
        finally:
            postgres.start()
        wait_for(lambda: finished(service), timeout=300)
        wait_for(lambda: not service.metrics()["pending_events"], timeout=60)
    finally:
        service.stop()
    assert outcome(postgres.url) == single_process


def test_camera_changes_through_the_api_reach_the_workers(cluster, postgres, footage, test_model, tmp_path) -> None:
    from serving.cluster.leases import current
    from serving.settings import Settings
    from tests.support.service import RunningService, pick_port

    media = Path(footage[0]["source"]).parent
    settings = Settings(data_dir=tmp_path / "api", database_url=postgres.url, model=test_model, threads=1,
                        admin_key="gw_test_admin_key_0123456789", ray_address=cluster[0].address,
                        cluster_replay_speed=1.0, cluster_heartbeat_s=0.5, media_roots=[media], port=pick_port())
    running = RunningService(settings, file_cameras=parsed(footage[:4]))
    try:
        service = running.service
        before = wait_for(lambda: len(placed_of(service)) == 4 and placed_of(service), timeout=120)
        with running.client(running.admin_key) as http:
            added = http.post("/v1/cameras", json=footage[4])
            assert added.status_code == 201, added.text
            owner = wait_for(lambda: placed_of(service).get("cam-4"), timeout=60)
            # The worker running it reports its stream: the API shows that worker's health.
            health = wait_for(lambda: (h := http.get("/v1/cameras/cam-4").json()["health"])
                              and h.get("frames_sampled", 0) > 0 and h, timeout=60)
            assert health["camera"] == "cam-4" and health["connected"] is True
            from serving.web.dashboard import camera_health  # the dashboard's camera panel

            panel = {row["camera"]: row for row in camera_health(service.cameras.health())}
            assert sorted(panel) == [f"cam-{i}" for i in range(5)] and panel["cam-4"]["frames_sampled"] > 0
            metrics = http.get("/metrics").text
            assert f'gridwatch_worker_cameras{{worker="{owner[0]}"' in metrics
            assert http.delete("/v1/cameras/cam-4").status_code == 204
            # Its events filed first (a hand-off), then its lease revoked.
            wait_for(lambda: next(r for r in current(service.db) if r.camera == "cam-4").worker is None, timeout=30)
        held = {row.camera: (row.worker, row.fencing) for row in current(service.db)}
        assert held["cam-4"][0] is None  # revoked: anything still on its way is refused
        # The other cameras ran on, under the leases they had (not restarted by the change).
        assert {cid: held[cid] for cid in before} == before
    finally:
        running.stop()


def placed_of(service) -> dict[str, tuple[str, int]]:
    """camera -> (worker, fencing) for the cameras up workers hold."""
    from serving.cluster.leases import current

    status = service.coordinator.status()
    up = {c: w["worker"] for w in status["workers"] if w["state"] == "up" for c in w["cameras"]}
    return {row.camera: (row.worker, row.fencing) for row in current(service.db)
            if row.worker is not None and up.get(row.camera) == row.worker}


def test_a_new_node_takes_a_bounded_share_of_cameras(postgres, footage, test_model, single_process, tmp_path) -> None:
    made, _ = ray_cluster(worker_nodes=1)
    try:
        # At real time (the 40 s clips last 40 s): a camera that finished before the new worker
        # came up stays where it is (it has nothing left to play), and this test is about the
        # cameras still running.
        service = cluster_service((made, []), postgres, footage, test_model, tmp_path, cluster_max_moves=2,
                                  cluster_replay_speed=1.0)
        try:
            (first,) = wait_for(lambda: placed(service), timeout=120).values()
            made.add_node(num_cpus=1)

            def arrived():
                status = service.coordinator.status()
                up = {w["worker"]: w for w in status["workers"] if w["state"] == "up" and w["cameras"]}
                return len(up) == 2 and not status["handing_off"] and up  # moves drain, then land

            workers = wait_for(arrived, timeout=120)
            new = next(w for w in workers.values() if w["worker"] != first["worker"])
            # Evening the load would move three; it may take two at a time.
            assert len(new["cameras"]) == 2 and len(workers[first["worker"]]["cameras"]) == 4
            wait_for(lambda: finished(service), timeout=300)
        finally:
            service.stop()
    finally:
        ray.shutdown()
        made.shutdown()
    assert outcome(postgres.url) == single_process


def test_finished_file_cameras_are_not_replayed_when_a_node_joins_or_dies(postgres, footage, test_model,
                                                                          single_process, tmp_path) -> None:
    made, (first_node,) = ray_cluster(worker_nodes=1)
    try:
        service = cluster_service((made, [first_node]), postgres, footage, test_model, tmp_path)
        try:
            wait_for(lambda: finished(service), timeout=300)
            frames_at_end = service.coordinator.stats["frames"]
            made.add_node(num_cpus=1)

            def up() -> list[dict]:
                return [w for w in service.coordinator.status()["workers"] if w["state"] == "up"]

            wait_for(lambda: len(up()) == 2, timeout=120)
            time.sleep(2.0)  # a few heartbeats, in which a move would have begun
            joined = service.coordinator.status()
            # The finished cameras' node goes: nothing of theirs is placed or played again.
            made.remove_node(first_node)
            wait_for(lambda: len(up()) == 1 and service.coordinator.counters["workers_dead"] == 1, timeout=60)
            time.sleep(3.0)
            after_death = service.coordinator.status()
            health = service.cameras.health()
            frames_after = service.coordinator.stats["frames"]
            from serving.api.metrics import render

            exposition = render(service.metrics())
        finally:
            service.stop()
    finally:
        ray.shutdown()
        made.shutdown()
    assert joined["counters"]["cameras_moved"] == 0 and not joined["handing_off"]
    assert joined["finished"] == [f"cam-{i}" for i in range(6)]
    assert after_death["finished"] == joined["finished"] and not after_death["unplaced"]
    assert all(w["cameras"] == [] for w in after_death["workers"] if w["state"] == "up")
    assert {h["state"] for h in health.values()} == {"finished"}
    assert frames_after == 0 < frames_at_end  # the survivor never decoded a frame of them
    assert "gridwatch_cluster_cameras_finished 6.0" in exposition.splitlines()
    assert outcome(postgres.url) == single_process
