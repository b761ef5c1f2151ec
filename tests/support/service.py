"""The service under test and what it talks to: a real uvicorn server in this process,
`gridwatch serve` as a subprocess, a signed-webhook case system on loopback, and polling."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import yaml


def pick_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MovableClock:
    """The wall clock, `offset` away from the system's: a test moves it instead of the
    machine's time (serving.clock.WallClock's interface)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset


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
        self.hang_up = False  # read the request, then close the connection without an answer
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
                if receiver.hang_up:
                    import socket

                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
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

    def __init__(self, settings, detector=None, file_cameras=None, clock=None) -> None:
        import threading

        import uvicorn

        from serving.api.app import create_app
        from serving.service import GridwatchService

        extra = {"clock": clock} if clock is not None else {}
        self.service = GridwatchService(settings, detector=detector, file_cameras=file_cameras, **extra)
        self.admin_key = settings.admin_key or self.service.new_admin_key
        self.url = f"http://127.0.0.1:{settings.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.service), host="127.0.0.1",
                                                    port=settings.port, log_level="warning", proxy_headers=False))
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


class DetectingClient:
    """A client that keeps posting one image to /v1/detect while a test swaps the model under it:
    the model version of each answer, in order, and every failed request."""

    def __init__(self, server: "RunningService", image: bytes) -> None:
        self.server, self.image = server, image
        self.versions: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> "DetectingClient":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with self.server.client(self.server.admin_key) as http:
            while not self._stop.is_set():
                response = http.post("/v1/detect", files={"file": ("a.jpg", self.image, "image/jpeg")})
                if response.status_code == 200:
                    self.versions.append(response.json()["model_version"])
                else:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")


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
            response = httpx.get(f"{self.url}/readyz", timeout=2)
        except httpx.HTTPError:
            return False
        if response.status_code == 200:
            return True
        # Up, with only cameras failing: a test's config may hold a dead camera on purpose.
        failing = [name for name, value in response.json()["checks"].items() if value != "ok" and name != "model"]
        return response.status_code == 503 and all(name.startswith("camera:") for name in failing)

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


# -- events as an edge box sends them ------------------------------------------------------
def event_json(event_id="e1", camera="cam-001", start_s=0, end_s=90, score=0.8, type="opened", box=(100, 100, 300, 300), **extra):
    base = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
    data = {"type": type, "event_id": event_id, "camera": camera, "violation": "bin_overflow",
            "matter_code": "37020206042", "grid": "370202001001001", "zone": "bins", "zone_type": "bin_area",
            "first_seen": (base + timedelta(seconds=start_s)).isoformat(),
            "last_seen": (base + timedelta(seconds=end_s)).isoformat(), "dwell_s": end_s - start_s,
            "track_id": 3, "score": score, "best_score": score, "needs_review": False, "box": list(box),
            "location": {"lat": 36.0671, "lon": 120.3826, "address": "Zhongshan Rd 1"}}
    data.update(extra)
    return data


def push(http, event: dict, image_path=None):
    files = {"frame": (image_path.name, image_path.read_bytes(), "image/jpeg")} if image_path else None
    return http.post("/v1/events", data={"event": json.dumps(event)}, files=files)
