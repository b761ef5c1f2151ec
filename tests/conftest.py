"""Shared fixtures: real databases, real images, free ports."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("GRIDWATCH_SHARED_DIR", REPO_ROOT.parent / "shared"))
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
    from serving.settings import default_model_path

    model = default_model_path() or shared_dir / "weights" / "coco-yolov8n-int8.onnx"
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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def make_event(dataset_images: list[Path]):
    """Build ViolationEvents like the stream stage does, with a real evidence frame."""
    from serving.events import Location, ViolationEvent

    base = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)

    def build(type="opened", event_id="ev-1", camera="cam-001", violation="bin_overflow", zone="bins",
              start_s=0.0, end_s=60.0, score=0.8, box=(100.0, 100.0, 300.0, 300.0), image=0,
              needs_review=False, evidence=True):
        return ViolationEvent(
            type=type, event_id=event_id, camera=camera, violation=violation,
            matter_code="37020206042", grid="370202001001001", zone=zone,
            first_seen=base + timedelta(seconds=start_s), last_seen=base + timedelta(seconds=end_s),
            dwell_s=end_s - start_s, track_id=1, score=score, best_score=score, needs_review=needs_review,
            evidence=(str(dataset_images[image]),) if evidence else (), division="370202", zone_type="bin_area",
            box=box, location=Location(36.0671, 120.3826, "Zhongshan Rd 1, Shinan"),
        )

    return build
