"""`gridwatch watch`: the issue's example YAML, as written, replays a recording to JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.support.shared_data import shared_available
from tests.support.streams import (
    COCO_MODEL, EXAMPLE_YAML, SEED_TAXONOMY_OVERRIDE, seed_props, street_scene, write_video,
)

pytestmark = pytest.mark.skipif(not shared_available(), reason="../shared datasets/weights not found")
T0 = datetime(2026, 5, 1, 2, 0, tzinfo=timezone.utc)


def _watch(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", "watch", "--config", str(tmp_path / "cameras.yaml"),
         "--model", str(COCO_MODEL), "--taxonomy", str(tmp_path / "city.yaml"), "--threads", "2", *extra],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )


def test_example_config_replays_to_event_lines(tmp_path: Path) -> None:
    (tmp_path / "recordings").mkdir()
    write_video(tmp_path / "recordings" / "cam-001.mp4", street_scene(seed_props()), creation_time=T0)
    (tmp_path / "cameras.yaml").write_text(EXAMPLE_YAML, encoding="utf-8")
    (tmp_path / "city.yaml").write_text(SEED_TAXONOMY_OVERRIDE, encoding="utf-8")
    events_file = tmp_path / "out" / "events.jsonl"
    events_file.parent.mkdir()

    result = _watch(tmp_path, "--events", str(events_file), "--evidence-dir", str(tmp_path / "evidence"))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in events_file.read_text(encoding="utf-8").splitlines()]
    assert [(e["type"], e["violation"], e["zone"]) for e in lines] == [
        ("opened", "bin_overflow", "bins"),
        ("opened", "street_stall", "east-sidewalk"),
        ("closed", "bin_overflow", "bins"),
        ("closed", "street_stall", "east-sidewalk"),
    ]
    opened = lines[0]
    assert opened["matter_code"] == "37020206042" and len(opened["matter_code"]) == 11
    assert opened["grid"] == "370202001001001" and opened["camera"] == "cam-001"
    assert T0 + timedelta(seconds=20) <= datetime.fromisoformat(opened["first_seen"]) <= T0 + timedelta(seconds=24)
    assert isinstance(opened["needs_review"], bool) and isinstance(opened["track_id"], int)
    assert len(opened["evidence"]) == 3
    assert all(Path(p).is_file() and str(tmp_path / "evidence") in p for p in opened["evidence"])


def test_bad_config_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "cameras.yaml").write_text(EXAMPLE_YAML.replace('"370202"', '"37020"'), encoding="utf-8")
    (tmp_path / "city.yaml").write_text(SEED_TAXONOMY_OVERRIDE, encoding="utf-8")
    result = _watch(tmp_path)
    assert result.returncode == 2
    assert "camera 'cam-001', field division" in result.stderr
    assert "Traceback" not in result.stderr
