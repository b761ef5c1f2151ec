"""`gridwatch bench` (detector mode) on the shipped model: the int8 ratio at batch 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector import Detector
from tests.support.shared_data import shared_available
from tests.support.streams import DATASETS

pytestmark = pytest.mark.skipif(not shared_available(), reason="../shared datasets/weights not found")

SHIPPED = Path(__file__).resolve().parents[3] / "weights" / "gridwatch-int8.onnx"


def _bench(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", "bench", "--frames", "2", "--rounds", "1", "--threads", "2",
         "--images", str(DATASETS / "thela_india" / "images"), *extra],
        capture_output=True, text=True, timeout=300,
    )


def test_bench_prints_the_int8_ratio_against_the_fp32_twin() -> None:
    result = _bench("--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(data["model"]) == SHIPPED and Path(data["reference_model"]).name == "gridwatch-fp32.onnx"
    one = data["by_batch"]["1"]
    assert one["ultralytics_over_gridwatch"] == pytest.approx(one["ultralytics_ms"] / one["gridwatch_beside_ultralytics_ms"])
    assert one["session_ms"] > 0 and one["gridwatch_ms"] > 0
    (h, w), _ = Detector(SHIPPED).input_plan(np.zeros((1080, 1920, 3), np.uint8))
    assert data["frame_input"] == f"{w}x{h}"
    assert data["tiled_static_check_ms"] > one["gridwatch_ms"]  # many tiles cost more than one frame

    table = _bench()
    assert table.returncode == 0, table.stderr
    assert "batch 1, end to end: gridwatch-int8.onnx is " in table.stdout
    assert "as fast as Ultralytics' predict on gridwatch-fp32.onnx" in table.stdout


def test_compare_runs_options_side_by_side() -> None:
    result = _bench("--json", "--compare", str(SHIPPED), f"{SHIPPED}@384")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout.strip().splitlines()[-1])["options"]
    assert [r["option"] for r in rows] == [str(SHIPPED), f"{SHIPPED}@384"]
    # The shipped model leaves height and width free: a 1080p frame runs letterboxed to the stride.
    assert [r["frame_input"] for r in rows] == ["448x256", "384x224"]
    for row in rows:
        assert Path(row["reference_model"]).name == "gridwatch-fp32.onnx"
        assert row["ultralytics_over_gridwatch"] == pytest.approx(row["ultralytics_ms"] / row["gridwatch_ms"])

    missing = _bench("--compare", "no/such-int8.onnx")
    assert missing.returncode == 2 and "no such model: no/such-int8.onnx" in missing.stderr


def test_a_levels_head_model_without_its_fp32_twin_is_refused_with_the_way_out(tmp_path) -> None:
    """Ultralytics cannot run gridwatch's per-level int8 graph: say so, do not crash inside it."""
    from tests.detector.test_levels_head import _pooling_model

    alone = tmp_path / "alone-int8.onnx"
    _pooling_model(alone, {"box_distribution_0": 64, "class_logits_0": 2})
    for args in (("--model", str(alone)), ("--compare", str(alone))):
        proc = _bench(*args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Ultralytics cannot run" in proc.stderr and "--reference-model" in proc.stderr


def test_a_run_whose_ours_over_session_is_below_1_is_flagged_not_printed_as_a_figure() -> None:
    from serving.bench.detector import Timing, format_table, summarise

    summary = summarise([Timing("session", 1, 4.0), Timing("gridwatch", 1, 3.6), Timing("ultralytics", 1, 10.0),
                         Timing("session", 8, 3.0), Timing("gridwatch", 8, 3.3), Timing("ultralytics", 8, 7.0)])
    assert summary["by_batch"][1]["noisy"] and not summary["by_batch"][8]["noisy"]
    table = format_table(summary, Path("gridwatch-int8.onnx"), Path("gridwatch-fp32.onnx"))
    one, eight = (line for line in table.splitlines() if line.lstrip().startswith(("1 ", "8 ")))
    assert "noisy" in one and "0.90x" not in one
    assert "1.10x" in eight
    assert "NOISY RUN: at batch 1 gridwatch timed faster than the bare session" in table


def test_session_gridwatch_and_ultralytics_take_turns_on_every_batch() -> None:
    """Timed one after the other, a busy spell on a shared machine fell on one of them alone and
    skewed the ratios (ours/session below 1.0); each batch now goes through all three back to
    back, and which goes first turns."""
    from serving.bench.detector import time_interleaved

    calls: list[tuple[str, int]] = []
    fns = {name: (lambda i, name=name: calls.append((name, i))) for name in ("session", "gridwatch", "ultralytics")}
    medians = time_interleaved(fns, [[np.zeros(1)], [np.zeros(1)]], rounds=2)
    assert set(medians) == {"session", "gridwatch", "ultralytics"} and all(v >= 0 for v in medians.values())
    timed = calls[3:]  # after one warm-up call each
    turns = [timed[k : k + 3] for k in range(0, len(timed), 3)]
    assert len(turns) == 4  # 2 rounds x 2 batches
    assert all(sorted(name for name, _ in turn) == ["gridwatch", "session", "ultralytics"] for turn in turns)
    assert [{i for _, i in turn} for turn in turns] == [{0}, {1}, {0}, {1}]
    assert {turn[0][0] for turn in turns} == {"session", "gridwatch", "ultralytics"}


def test_the_session_is_never_timed_in_turns_with_ultralytics(monkeypatch) -> None:
    """Ultralytics' pool threads spin after its runs; whichever contestant followed it ran slower,
    and in a three-way rotation that was the bare session two turns in three (ours/session read
    below 1.0 on an idle machine). The session is timed in turns with our detector alone, and
    Ultralytics in turns with our detector; at every batch size as many calls are timed."""
    from serving.bench import detector as bench

    pairs: list[tuple[tuple[str, ...], int, int]] = []

    def recording(fns, batches, rounds):  # noqa: ANN001, ANN202
        pairs.append((tuple(fns), len(batches[0]), rounds * len(batches)))
        return {name: 1.0 for name in fns}

    monkeypatch.setattr(bench, "time_interleaved", recording)
    monkeypatch.setattr(bench, "ultralytics_fn", lambda model, detector: lambda batch: None)
    monkeypatch.setattr(bench, "_time_per_frame", lambda fn, batches, rounds: 2.0)
    frames = [np.zeros((1080, 1920, 3), np.uint8)] * 16
    timings = bench.run_benchmark(SHIPPED, SHIPPED, frames, threads=1, rounds=2)
    assert [names for names, _, _ in pairs] == [("session", "gridwatch"), ("gridwatch", "ultralytics")] * 2
    assert [batch for _, batch, _ in pairs] == [1, 1, 8, 8]
    assert {calls for _, _, calls in pairs} == {32}  # timed calls, the samples of each median
    names = {(t.name, t.batch) for t in timings}
    assert ("gridwatch_beside_ultralytics", 8) in names and ("session", 1) in names
