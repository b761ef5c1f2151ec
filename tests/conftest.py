"""Shared fixtures: real databases, real images, free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import yaml

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


def pick_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    return pick_port()


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


class WebhookReceiver:
    """A case system on loopback: verifies signatures, dedups by Idempotency-Key, can go down."""

    def __init__(self, port: int, secret: str) -> None:
        self.port = port
        self.secret = secret
        self.url = f"http://127.0.0.1:{port}/cases"
        self.received: dict[str, dict] = {}  # idempotency key -> body, first copy
        self.raw_bodies: list[bytes] = []  # every accepted body as sent, in order
        self.requests = 0
        self.bad_signatures = 0
        self.fail_with: int | None = None  # answer this status instead of accepting
        self.delay_s = 0.0  # a slow case system: widens the window for a crash mid-delivery
        self._server = None
        self._thread = None

    def start(self) -> "WebhookReceiver":
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from serving.delivery import verify

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests += 1
                if receiver.delay_s:
                    import time

                    time.sleep(receiver.delay_s)
                status = 200
                if receiver.fail_with is not None:
                    status = receiver.fail_with
                elif not verify(receiver.secret, self.headers.get("X-Gridwatch-Timestamp", ""), body,
                                self.headers.get("X-Gridwatch-Signature", "")):
                    receiver.bad_signatures += 1
                    status = 401
                else:
                    receiver.received.setdefault(self.headers["Idempotency-Key"], json.loads(body))
                    receiver.raw_bodies.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def reported(self) -> dict[str, int]:
        """case number -> how many distinct case.reported versions arrived."""
        counts: dict[str, int] = {}
        for body in self.received.values():
            if body["event"] == "case.reported":
                counts[body["case"]["case_number"]] = counts.get(body["case"]["case_number"], 0) + 1
        return counts


@pytest.fixture
def receiver():
    hook = WebhookReceiver(pick_port(), secret="test-secret-123")
    yield hook
    hook.stop()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Poll until predicate() is truthy (returns it) or fail with a clear message."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)


class RunningService:
    """A GridwatchService behind a real uvicorn server on 127.0.0.1, in this process."""

    def __init__(self, settings, detector=None, file_cameras=None) -> None:
        import threading

        import uvicorn

        from serving.api.app import create_app
        from serving.service import GridwatchService

        self.service = GridwatchService(settings, detector=detector, file_cameras=file_cameras)
        self.admin_key = settings.admin_key or self.service.new_admin_key
        self.url = f"http://127.0.0.1:{settings.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.service), host="127.0.0.1",
                                                    port=settings.port, log_level="warning"))
        self.service.start()
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=20)

    def client(self, key: str | None = None):
        import httpx

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def key(self, role: str) -> str:
        with self.client(self.admin_key) as http:
            response = http.post("/v1/keys", json={"name": f"test {role}", "role": role})
            response.raise_for_status()
            return response.json()["key"]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.service.stop()


@pytest.fixture(scope="session")
def shared_detector(test_model: Path):
    from detector.runtime import Detector

    return Detector(test_model, threads=1)


@pytest.fixture
def run_service(tmp_path: Path, shared_detector):
    """Start a service: run_service(db_url, **settings) -> RunningService; stopped at teardown."""
    from serving.settings import Settings

    running: list[RunningService] = []

    def start(db_url: str | None = None, **overrides) -> RunningService:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        values = dict(data_dir=tmp_path / f"data{len(running)}", database_url=db_url, port=port,
                      admin_key="gw_test_admin_key_0123456789", delivery_backoff_s=0.05,
                      delivery_backoff_max_s=0.3, delivery_poll_s=0.05)
        values.update(overrides)
        service = RunningService(Settings(**values), detector=shared_detector)
        running.append(service)
        return service

    yield start
    for service in running:
        service.stop()


# -- `gridwatch serve` as a real subprocess ------------------------------------------------------
ADMIN = "gw_test_admin_key_for_serve_0001"


class ServeProcess:
    """`python -m serving.cli serve` in a work folder, with its stderr in serve.log."""

    def __init__(self, workdir: Path, port: int, model: Path | None, config: Path | None = None,
                 env: dict | None = None) -> None:
        self.workdir, self.port, self.model, self.config = workdir, port, model, config
        inherited = {k: v for k, v in os.environ.items() if k not in ("GRIDWATCH_ADMIN_KEY", "GRIDWATCH_MODEL")}
        # model None: the embedded default, the shipped model in weights/
        self.env = {**inherited, **({"GRIDWATCH_MODEL": str(model)} if model else {}), **(env or {})}
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "serve.log"

    def start(self) -> ServeProcess:
        args = [sys.executable, "-m", "serving.cli", "serve", "--port", str(self.port)]
        if self.config is not None:
            args += ["--config", str(self.config)]
        self.out = open(self.log, "a")
        self.proc = subprocess.Popen(args, cwd=self.workdir, env=self.env, stdout=subprocess.PIPE,
                                     stderr=self.out, text=True)
        self.stdout_lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        wait_for(self._healthy, timeout=60)
        return self

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.stdout_lines.append(line)

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None:
            self.out.close()


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


def write_config(path: Path, db_url: str | None, receiver, cameras: list | None = None, **settings) -> Path:
    values = {"webhook_url": receiver.url, "webhook_secret": receiver.secret, "delivery_backoff_s": 0.1,
              "delivery_backoff_max_s": 0.5, "delivery_poll_s": 0.1, "auto_confirm": {"bin_overflow": 0.3},
              "data_dir": str(path.parent / "data"), **settings}
    if db_url:
        values["database_url"] = db_url
    data = {"settings": values}
    if cameras:
        data["cameras"] = cameras
    path.write_text(yaml.safe_dump(data))
    return path


