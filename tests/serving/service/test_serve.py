"""`gridwatch serve` as a real process: embedded defaults, graceful stop, and SIGKILL in the
middle of work with no case lost and none duplicated, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx

from tests.support.service import ADMIN, event_json, wait_for, write_config


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


def test_defaults_serve_the_shipped_model(serve, free_port, dataset_images) -> None:
    from serving.settings import default_model_path

    shipped = default_model_path()
    assert shipped is not None, "weights/ must hold the default model"
    process = serve(free_port, env={"GRIDWATCH_ADMIN_KEY": ADMIN}, shipped_model=True).start()
    found = set()
    for image in dataset_images[:6]:  # bins and garbage piles
        response = httpx.post(f"{process.url}/v1/detect", headers={"Authorization": f"Bearer {ADMIN}"},
                              files={"file": (image.name, image.read_bytes(), "image/jpeg")}, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"].startswith("gridwatch-")
        found |= {d["class_name"] for d in body["detections"]}
    assert found & {"garbage_bin", "bin_overflow", "garbage_pile"}
    assert process.terminate() == 0


def test_bad_config_is_a_clear_error(serve, free_port, tmp_path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("settings: {reopen_policy: sometimes}\n")
    result = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--config", str(config), "--port", str(free_port)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "reopen_policy" in result.stderr




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


def test_partial_evidence_writes_are_cleaned_at_start(run_service, tmp_path) -> None:
    """A SIGKILL mid-write leaves a partial file in the evidence store; the next start removes
    it (old ones only: a young one may be another process's write in flight)."""
    import os

    evidence = tmp_path / "data0" / "evidence" / "GW20261123-AAAAAA-000001"
    evidence.mkdir(parents=True)
    stale, fresh = evidence / ".incoming-killed", evidence / ".incoming-in-flight"
    stale.write_bytes(b"half a jpeg")
    fresh.write_bytes(b"being written")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    run_service()
    assert not stale.exists() and fresh.exists()


def test_data_folder_is_out_of_gits_way() -> None:
    from detector.files import REPO_ROOT

    ignored = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", "gridwatch-data/gridwatch.db"])
    assert ignored.returncode == 0
    script = (REPO_ROOT / "scripts" / "serve.sh").read_text()
    # The service runs in the caller's folder (the install alone runs in the repository).
    assert '(cd "$root" && scripts/install.sh base)' in script and 'exec "$root/.venv/bin/gridwatch" serve' in script


def test_serve_runs_on_jemalloc_unless_told_otherwise(serve, free_port) -> None:
    """The allocator that keeps a months-long footprint flat (see the README's soak): the
    process replaces itself once with jemalloc preloaded, keeping its pid."""
    from pathlib import Path

    def allocator(process) -> bool:
        return "libjemalloc" in Path(f"/proc/{process.proc.pid}/maps").read_text()

    default = serve(free_port, env={"GRIDWATCH_ADMIN_KEY": ADMIN}).start()
    assert allocator(default)
    assert default.terminate() == 0
    system = serve(free_port, env={"GRIDWATCH_ADMIN_KEY": ADMIN, "GRIDWATCH_ALLOCATOR": "system"}).start()
    assert not allocator(system)
    assert system.terminate() == 0
