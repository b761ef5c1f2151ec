"""Fixtures only: real databases, real images, free ports, running services. Helpers the
tests import live in tests/support."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.support.service import RunningService, ServeProcess, WebhookReceiver, pick_port
from tests.support.shared_data import SHARED as SHARED_DIR

POSTGRES_URL = os.environ.get("GRIDWATCH_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DIR} (set GRIDWATCH_SHARED_DIR)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def dataset_images(shared_dir: Path) -> list[Path]:
    images = sorted((shared_dir / "datasets" / "garbage_overflow_cn" / "images").glob("*.jpg"))
    if len(images) < 4:
        pytest.skip("garbage_overflow_cn images not found under the shared datasets")
    return images


@pytest.fixture(scope="session")
def test_model(shared_dir: Path) -> Path:
    """The COCO seed model: stream and rule tests stage scenes with COCO objects and name
    COCO classes in their rules, so they must not depend on what the shipped model learnt."""
    model = shared_dir / "weights" / "coco-yolov8n-int8.onnx"
    if not model.is_file():
        pytest.skip(f"no model at {model}")
    return model


def _reset_postgres(url: str) -> None:
    from sqlalchemy import MetaData, create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        meta = MetaData()
        meta.reflect(conn)
        meta.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, and PostgreSQL when GRIDWATCH_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gridwatch.db'}"
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL not configured: set GRIDWATCH_TEST_POSTGRES_URL=postgresql+psycopg2://USER:PW@HOST/DB")
    _reset_postgres(POSTGRES_URL)
    return POSTGRES_URL


@pytest.fixture
def free_port() -> int:
    return pick_port()


@pytest.fixture
def make_event(dataset_images: list[Path]):
    """(ViolationEvent, EvidenceFrame | None) as the stream stage hands them over, the frame
    a real dataset image."""
    from serving.events import Location, ViolationEvent
    from serving.evidence import EvidenceFrame

    base = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)

    def build(type="opened", event_id="ev-1", camera="cam-001", violation="bin_overflow", zone="bins",
              start_s=0.0, end_s=60.0, score=0.8, box=(100.0, 100.0, 300.0, 300.0), image=0,
              needs_review=False, evidence=True):
        event = ViolationEvent(
            type=type, event_id=event_id, camera=camera, violation=violation,
            matter_code="37020206042", grid="370202001001001", zone=zone,
            first_seen=base + timedelta(seconds=start_s), last_seen=base + timedelta(seconds=end_s),
            dwell_s=end_s - start_s, track_id=1, score=score, best_score=score, needs_review=needs_review,
            division="370202", zone_type="bin_area", box=box,
            location=Location(lat=36.0671, lon=120.3826, address="Zhongshan Rd 1, Shinan"),
        )
        frame = EvidenceFrame(box=box, label=violation, encoded=dataset_images[image].read_bytes(), suffix=".jpg")
        return event, frame if evidence else None

    return build


@pytest.fixture
def receiver():
    hook = WebhookReceiver(pick_port(), secret="test-secret-123")
    yield hook
    hook.stop()


@pytest.fixture(scope="session")
def shared_detector(test_model: Path):
    from detector.runtime import Detector

    return Detector(test_model, threads=1)


@pytest.fixture
def run_service(tmp_path: Path, shared_detector):
    """Start a service: run_service(db_url, clock=None, **settings) -> RunningService (`clock`: the
    service's wall clock, a MovableClock to move time); stopped at teardown."""
    from serving.settings import Settings

    running: list[RunningService] = []

    def start(db_url: str | None = None, clock=None, **overrides) -> RunningService:  # noqa: ANN001
        port = pick_port()
        values = dict(data_dir=tmp_path / f"data{len(running)}", database_url=db_url, port=port,
                      admin_key="gw_test_admin_key_0123456789", delivery_backoff_s=0.05,
                      delivery_backoff_max_s=0.3, delivery_poll_s=0.05)
        values.update(overrides)
        service = RunningService(Settings(**values), detector=shared_detector, clock=clock)
        running.append(service)
        return service

    yield start
    for service in running:
        service.stop()


@pytest.fixture
def serve(tmp_path, test_model):
    started: list[ServeProcess] = []

    def make(port: int, config: Path | None = None, env: dict | None = None, shipped_model: bool = False) -> ServeProcess:
        process = ServeProcess(tmp_path, port, None if shipped_model else test_model, config, env)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()




@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium driven by Playwright (which never downloads a browser of its own)."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").is_file():
        pytest.skip("no /usr/bin/chromium: apt-get install chromium")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
        yield browser
        browser.close()
