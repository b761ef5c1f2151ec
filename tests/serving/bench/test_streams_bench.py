"""`gridwatch bench --cameras N`: measures decode/detect/track and prints cameras per machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.shared_data import shared_available
from tests.support.streams import COCO_MODEL, DATASETS

pytestmark = pytest.mark.skipif(not shared_available(), reason="../shared datasets/weights not found")


def _bench(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", "bench", "--cameras", "3", "--model", str(COCO_MODEL),
         "--images", str(DATASETS / "thela_india" / "images"), "--resolution", "640x360", "--fps", "10",
         "--clip-seconds", "6", "--sample-every", "2", "--threads", "2", *extra],
        capture_output=True, text=True, timeout=300,
    )


def test_bench_cameras_reports_where_time_goes() -> None:
    result = _bench("--json", "--verify-seconds", "4")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    # Keyframe-only decoding must decode less than full decoding of the same clip.
    assert 0 < data["decode_keyframes_s_per_s"] < data["decode_full_s_per_s"]
    assert data["detect_s_per_frame"] > 0 and data["track_s_per_frame"] >= 0
    assert data["tiled_s_per_check"] > 0 and data["tiled_check_every"] == 300
    assert data["cameras_keyframes"] > data["cameras_full"] > 0
    assert data["sustains_target"] == (data["cameras_keyframes"] >= 3)
    assert data["verify"]["cameras"] == 3 and data["verify"]["samples"] > 0 and data["verify"]["errors"] == 0
    assert data["verify"]["dropped"] == 0 and 0 <= data["verify"]["age_p95_s"] < 5
    v = data["verify"]
    # Every sample a camera sent is accounted for: analysed, dropped, or sent as the window closed.
    assert v["samples"] + v["dropped"] + v["pending_at_end"] == v["expected"]
    # Live pacing: about one sample per camera per interval, plus each camera's first at t=0.
    assert abs(v["expected"] - 3 * 4 / 2) <= 3


def test_bench_cameras_table() -> None:
    result = _bench()
    assert result.returncode == 0, result.stderr
    assert "cameras per machine:" in result.stdout
    assert "keyframes only" in result.stdout and "every frame" in result.stdout
    assert "tiled static check:" in result.stdout
