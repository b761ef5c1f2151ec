"""Camera leases and fencing at ingest, the SQLite refusal and `gridwatch cluster status`:
no Ray needed (the base install runs these)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from detector.taxonomy import load_taxonomy
from serving.cases import CasePolicy, CaseService
from serving.cluster import leases
from serving.cluster.leases import StaleLeaseError
from serving.evidence import EvidenceStore
from serving.store.db import Database
from serving.store.models import Case, CaseEvent


@pytest.fixture
def cases(db_url: str, tmp_path: Path):
    db = Database(db_url)
    yield CaseService(db, EvidenceStore(tmp_path / "evidence"), load_taxonomy(), CasePolicy(),
                      model_version="test-1", public_url="http://gw.test")
    db.close()


def count(service: CaseService, model) -> int:
    with service.db.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_events_under_an_old_fencing_number_are_refused(cases, make_event) -> None:
    first = leases.grant(cases.db, ["cam-001"], "w1", "node-a")["cam-001"]
    opened, frame = make_event(type="opened")
    assert cases.ingest(opened, frame, fencing=first).action == "created"
    moved = leases.grant(cases.db, ["cam-001"], "w2", "node-b")["cam-001"]
    assert moved == first + 1
    late, _ = make_event(type="updated", end_s=120.0)
    with pytest.raises(StaleLeaseError, match="fencing number 1 refused"):
        cases.ingest(late, None, fencing=first)  # the old worker, after the camera moved
    assert count(cases, CaseEvent) == 1
    assert cases.ingest(late, None, fencing=moved).action == "joined"
    # The new holder replaying the same footage: the same event id, applied once.
    assert cases.ingest(opened, frame, fencing=moved).action == "duplicate"
    assert count(cases, Case) == 1 and count(cases, CaseEvent) == 2
    leases.grant(cases.db, ["cam-001"], None)  # revoked: held by none, nothing is filed
    with pytest.raises(StaleLeaseError, match="no lease"):
        cases.ingest(late, None, fencing=moved + 1)


def test_events_of_a_camera_never_leased_are_refused_in_cluster_mode(cases, make_event) -> None:
    opened, frame = make_event()
    with pytest.raises(StaleLeaseError):
        cases.ingest(opened, frame, fencing=1)
    assert cases.ingest(opened, frame).action == "created"  # one process: no fencing, as before


def test_cluster_mode_refuses_sqlite_naming_the_setting(tmp_path: Path) -> None:
    from serving.service import GridwatchService
    from serving.settings import Settings

    with pytest.raises(RuntimeError, match="database_url.*GRIDWATCH_DATABASE_URL"):
        GridwatchService(Settings(data_dir=tmp_path, ray_address="auto"))
    result = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--cluster", "auto",
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "cluster mode needs PostgreSQL" in result.stderr and "database_url" in result.stderr


def test_cluster_status_prints_cameras_per_worker(db_url: str, tmp_path: Path) -> None:
    db = Database(db_url)
    leases.grant(db, ["cam-a", "cam-b"], "w1", "node-a")
    leases.grant(db, ["cam-c"], "w2", "node-b")
    leases.grant(db, ["cam-c"], "w1", "node-a")  # moved: fencing 2
    leases.grant(db, ["cam-d"], None)
    db.close()
    config = tmp_path / "gridwatch.yaml"
    config.write_text(json.dumps({"settings": {"database_url": db_url}}))
    run = [sys.executable, "-m", "serving.cli", "cluster", "status", "--config", str(config)]
    listed = json.loads(subprocess.run(run + ["--json"], capture_output=True, text=True, timeout=120, check=True).stdout)
    assert [(w["worker"], w["node"], [(c["camera"], c["fencing"]) for c in w["cameras"]]) for w in listed["workers"]] \
        == [("w1", "node-a", [("cam-a", 1), ("cam-b", 1), ("cam-c", 2)])]
    assert listed["unheld"] == ["cam-d"]
    table = subprocess.run(run, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "w1" in table and "cam-c#2" in table and "cam-d" in table


def test_learned_alert_thresholds_reach_a_camera_workers_rules(db_url: str, tmp_path: Path) -> None:
    """The coordinator's heartbeat carries the thresholds learned from reviews (ThresholdBook,
    in the serving process) to the worker, whose rules have no database to read them from."""
    from serving.cameras import parse_cameras
    from serving.cases.thresholds import ThresholdBook
    from serving.cluster.worker import CameraWorker
    from serving.settings import Settings, ThresholdSettings
    from serving.store.models import Threshold

    db = Database(db_url)
    with db.transaction() as session:
        session.add(Threshold(camera="cam-001", violation="bin_overflow", confirmed=20, rejected=2,
                              alert=0.62, auto_confirm=None))
        session.add(Threshold(camera="cam-009", violation="bin_overflow", confirmed=20, rejected=2,
                              alert=0.3, auto_confirm=None))
    book = ThresholdBook(db, ThresholdSettings(), refresh_s=0)
    assert book.alerts_for(["cam-001", "cam-002"]) == {"cam-001": {"bin_overflow": 0.62}}

    camera = parse_cameras({"cameras": [
        {"id": "cam-001", "source": "rtsp://127.0.0.1:9/none", "division": "370202", "grid": "370202001001001",
         "zones": [{"name": "bins", "type": "bin_area", "polygon": [[0, 0], [1, 0], [1, 1]]}],
         "rules": [{"violation": "bin_overflow", "zone_types": ["bin_area"], "min_score": 0.4}]}]},
        Path(".")).cameras[0]
    worker = CameraWorker("w1", Settings(data_dir=tmp_path))
    try:
        worker.assign([(camera, 1)])
        rules = worker.pipeline.runtimes["cam-001"].rules
        assert rules.min_score(rules.rules[0]) == 0.4  # nothing learned reached it yet
        worker.report(book.alerts_for(worker.fencing))
        assert rules.min_score(rules.rules[0]) == 0.62
        worker.report(None)  # a heartbeat without thresholds (none to send) keeps the last ones
        assert rules.min_score(rules.rules[0]) == 0.62
    finally:
        worker.stop()
        db.close()


def test_a_camera_workers_unsure_frames_reach_the_labelling_queue_within_the_budget(db_url: str,
                                                                                    tmp_path: Path) -> None:
    """Active learning in cluster mode: the worker samples unsure frames of its cameras and
    hands them back with its heartbeat; the serving process applies the camera's daily
    budget (it knows what the queue holds already, e.g. from before a move) and stores them."""
    import time as clock

    from serving.cluster.worker import CameraWorker
    from serving.service import GridwatchService
    from serving.settings import Settings
    from tests.serving.labelling.test_labelling_pipeline import cameras, street_folder

    camera = cameras(street_folder(tmp_path, 12), tmp_path).cameras[0]
    labelling = {"daily_budget_per_camera": 3, "band": 1.0, "min_gap_s": 0}
    worker = CameraWorker("w1", Settings(data_dir=tmp_path / "worker", labelling=labelling))
    samples = []
    try:
        worker.assign([(camera, 1)])
        deadline = clock.monotonic() + 120
        while clock.monotonic() < deadline and worker.pipeline.stats["frames"] < 12:
            samples += worker.report().samples
            clock.sleep(0.2)
        samples += worker.report().samples
    finally:
        worker.stop()
    # Every frame with a watched class is unsure at band 1.0; the worker's own budget caps them.
    assert len(samples) == 3 and all(s.camera == "cam-lab" and s.reasons for s in samples)

    service = GridwatchService(Settings(data_dir=tmp_path / "data", database_url=db_url, labelling=labelling))
    try:
        service.on_sample(samples[0])  # queued earlier today, before the camera moved to this worker
        service.on_sample(samples[1])
        service.db.close()
        service = GridwatchService(Settings(data_dir=tmp_path / "data", database_url=db_url, labelling=labelling))
        for sample in samples:
            service.on_cluster_sample(sample)
        assert len(service.labelling.list()) == 3  # 3 a day: one more was kept, two turned away
    finally:
        service.db.close()


def test_a_dead_workers_up_series_reads_0_instead_of_vanishing(tmp_path: Path) -> None:
    from serving.api.metrics import render
    from serving.cluster.coordinator import ClusterCoordinator, WorkerHandle
    from serving.cluster.worker import WorkerReport
    from serving.settings import Settings

    settings = Settings(data_dir=tmp_path, database_url="postgresql+psycopg2://gridwatch@127.0.0.1:1/none")
    coordinator = ClusterCoordinator(settings, db=None, on_event=lambda *a: None)  # no camera: no lease to revoke
    for wid, node in (("w1", "node-a"), ("w2", "node-b")):
        worker = WorkerHandle(wid, actor=None, state="up")
        worker.report = WorkerReport(worker=wid, node=node, pid=1, cameras={}, health={},
                                     stats={"frames": 10, "detected": 5},
                                     queue_depth=0, detect_ms=3.0)
        coordinator.workers[wid] = worker
    coordinator._dead(coordinator.workers["w2"], RuntimeError("node gone"))

    status = coordinator.status()
    assert [(w["worker"], w["state"]) for w in status["workers"]] == [("w1", "up"), ("w2", "dead")]
    text = render({"pipeline": {}, "counters": {"detect_requests": 0, "detections": 0},
                   "case_counts": {"events": 0, "cases_created": 0}, "pending_events": 0, "cases_by_state": {},
                   "cases_by_review": {}, "outbox": {"pending": 0, "delivered": 0, "dead": 0, "lag_s": 0.0},
                   "model": {"version": "v", "swaps": 0}, "rechecks": {}, "cameras": {}, "cluster": status})
    assert 'gridwatch_worker_up{worker="w1",node="node-a"} 1.0' in text
    assert 'gridwatch_worker_up{worker="w2",node="node-b"} 0.0' in text


def cluster_status(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.cli", "cluster", "status", "--config", str(config), *extra],
                          capture_output=True, text=True, timeout=120)


def test_cluster_status_says_when_the_serving_process_is_gone(db_url: str, tmp_path: Path) -> None:
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from serving.store.models import CameraLease

    db = Database(db_url)
    leases.grant(db, ["cam-a", "cam-b"], "w1", "node-a")
    config = tmp_path / "gridwatch.yaml"
    config.write_text(json.dumps({"settings": {"database_url": db_url, "cluster_lease_timeout_s": 10}}))
    running = json.loads(cluster_status(config, "--json").stdout)
    assert running["service"] == "running" and running["stale_after_s"] == 15
    assert running["workers"][0]["since"] == running["workers"][0]["cameras"][0]["since"]
    table = cluster_status(config)
    assert "since" in table.stdout.splitlines()[0] and "gone" not in table.stderr

    with db.transaction() as session:  # the serving process stopped renewing ten minutes ago (SIGKILL)
        session.execute(update(CameraLease).values(renewed_at=datetime.now(timezone.utc) - timedelta(minutes=10)))
    assert json.loads(cluster_status(config, "--json").stdout)["service"] == "gone"
    table = cluster_status(config)
    assert table.returncode == 0 and "the serving process is gone" in table.stderr and "10 min ago" in table.stdout
    leases.renew(db, ["w1"])  # it runs again
    assert json.loads(cluster_status(config, "--json").stdout)["service"] == "running"
    db.close()


def test_cluster_status_without_the_database_is_one_clear_line(tmp_path: Path, free_port: int) -> None:
    config = tmp_path / "gridwatch.yaml"
    config.write_text(json.dumps({"settings": {
        "database_url": f"postgresql+psycopg2://gridwatch@127.0.0.1:{free_port}/gridwatch"}}))
    result = cluster_status(config)
    assert result.returncode == 2
    assert "the database is away (OperationalError" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
