"""`gridwatch serve` as a real process: embedded defaults, graceful stop, and SIGKILL in the
middle of work with no case lost and none duplicated, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import REPO_ROOT, wait_for
from test_api import event_json


class ServeProcess:
    def __init__(self, workdir: Path, port: int, model: Path, config: Path | None = None, env: dict | None = None) -> None:
        self.workdir, self.port, self.model, self.config = workdir, port, model, config
        self.env = {**os.environ, "GRIDWATCH_MODEL": str(model), **(env or {})}
        self.env.pop("GRIDWATCH_ADMIN_KEY", None) if env is None or "GRIDWATCH_ADMIN_KEY" not in env else None
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


@pytest.fixture
def serve(tmp_path, test_model):
    started: list[ServeProcess] = []

    def make(port: int, config: Path | None = None, env: dict | None = None) -> ServeProcess:
        process = ServeProcess(tmp_path, port, test_model, config, env)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


def test_defaults_print_an_admin_key_once_and_stop_gracefully(serve, free_port, tmp_path) -> None:
    first = serve(free_port).start()
    wait_for(lambda: any("admin API key" in line for line in first.stdout_lines), timeout=10)
    key = next(line for line in first.stdout_lines if "admin API key" in line).split()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{first.url}/v1/cases", headers=headers).json()["items"] == []
    assert httpx.get(f"{first.url}/v1/cameras", headers=headers).json() == []
    assert first.terminate() == 0
    assert (tmp_path / "gridwatch-data" / "gridwatch.db").is_file()

    second = serve(free_port).start()
    assert httpx.get(f"{second.url}/v1/cases", headers=headers).status_code == 200
    assert not any("admin API key" in line for line in second.stdout_lines)
    assert second.terminate() == 0

    third = serve(free_port, env={"GRIDWATCH_ADMIN_KEY": "gw_from_the_environment_123"}).start()
    assert httpx.get(f"{third.url}/v1/cases", headers={"Authorization": "Bearer gw_from_the_environment_123"}).status_code == 200
    assert third.terminate() == 0


def test_bad_config_is_a_clear_error(serve, free_port, tmp_path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("settings: {reopen_policy: sometimes}\n")
    result = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--config", str(config), "--port", str(free_port)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "reopen_policy" in result.stderr


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


ADMIN = "gw_test_admin_key_for_serve_0001"


def test_sigkill_mid_work_loses_and_duplicates_nothing(db_url, serve, free_port, receiver, dataset_images, tmp_path) -> None:
    receiver.start()
    receiver.delay_s = 0.05
    config = write_config(tmp_path / "gridwatch.yaml", db_url, receiver)
    process = serve(free_port, config, env={"GRIDWATCH_ADMIN_KEY": ADMIN}).start()
    headers = {"Authorization": f"Bearer {ADMIN}"}
    n = 12
    events = [event_json(f"k{i}", camera=f"cam-{i}") for i in range(n)]

    def push_all(stop_after: int | None = None) -> None:
        with httpx.Client(base_url=process.url, headers=headers, timeout=30) as http:
            for i, event in enumerate(events):
                if stop_after is not None and i == stop_after:
                    process.kill()  # SIGKILL: no shutdown code runs
                    return
                image = dataset_images[i % len(dataset_images)]
                response = http.post("/v1/events", data={"event": json.dumps(event)},
                                     files={"frame": (image.name, image.read_bytes(), "image/jpeg")})
                assert response.status_code == 200, response.text

    push_all(stop_after=7)
    process = serve(free_port, config, env={"GRIDWATCH_ADMIN_KEY": ADMIN}).start()
    # The producer does not know what was stored before the crash: it sends everything again.
    push_all()
    wait_for(lambda: len(receiver.reported()) == n, timeout=60)
    time.sleep(0.5)  # anything extra would arrive now
    listed = httpx.get(f"{process.url}/v1/cases", params={"limit": 100}, headers=headers).json()["items"]
    assert len(listed) == n and len({c["camera"] for c in listed}) == n
    assert receiver.reported() == {c["case_number"]: 1 for c in listed}
    assert receiver.bad_signatures == 0
    assert process.terminate() == 0
