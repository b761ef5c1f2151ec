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


def test_contestants_are_timed_in_alternating_blocks_each_started_on_a_quiet_process(monkeypatch) -> None:
    """Timed call by call in turns, each contestant ran on the caches and the spinning pool the
    other left behind (ours read 6.7 ms beside Ultralytics and 4.9 ms beside the session on the
    same frames). Each block is one untimed call and a pass over the batches back to back,
    started once the process is quiet; blocks alternate, and which goes first turns."""
    from serving.bench import detector as bench

    calls: list[tuple[str, int]] = []
    settled: list[int] = []
    monkeypatch.setattr(bench, "settle", lambda: settled.append(len(calls)) or 0.0)
    fns = {name: (lambda i, name=name: calls.append((name, i))) for name in ("session", "gridwatch")}
    medians = bench.time_in_blocks(fns, [[np.zeros(1)], [np.zeros(1)], [np.zeros(1)]], rounds=3)
    assert set(medians) == {"session", "gridwatch"} and all(v >= 0 for v in medians.values())
    blocks = [calls[k : k + 4] for k in range(0, len(calls), 4)]
    assert len(blocks) == 6 and len(calls) == 24  # 3 rounds x 2 contestants, 1 untimed + 3 timed
    assert all(len({name for name, _ in block}) == 1 for block in blocks)
    assert all([i for _, i in block] == [0, 0, 1, 2] for block in blocks)
    assert [block[0][0] for block in blocks] == ["session", "gridwatch", "gridwatch", "session", "session", "gridwatch"]
    assert settled == [0, 4, 8, 12, 16, 20]  # before every block, never inside one


def test_settle_waits_out_a_spinning_thread_and_returns_at_once_on_a_quiet_process() -> None:
    import threading
    import time

    from serving.bench.detector import settle

    assert settle() < 0.05
    stop = time.perf_counter() + 0.06

    def spin() -> None:
        while time.perf_counter() < stop:
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    waited = settle()
    spinner.join()
    assert waited >= 0.04


def test_the_session_is_never_timed_in_turns_with_ultralytics(monkeypatch) -> None:
    """Ultralytics' pool threads spin after its runs; whichever contestant followed it ran slower,
    and in a three-way rotation that was the bare session two turns in three (ours/session read
    below 1.0 on an idle machine). The session is timed in turns with our detector alone, and
    Ultralytics in turns with our detector; at every batch size as many calls are timed."""
    from serving.bench import detector as bench

    pairs: list[tuple[tuple[str, ...], int, int]] = []

    def recording(fns, batches, rounds, enter=None):  # noqa: ANN001, ANN202
        pairs.append((tuple(fns), len(batches[0]), rounds * len(batches)))
        return {name: 1.0 for name in fns}

    monkeypatch.setattr(bench, "time_in_blocks", recording)
    monkeypatch.setattr(bench, "ultralytics_fn", lambda model, detector: lambda batch: None)
    monkeypatch.setattr(bench, "time_per_frame", lambda fn, batches, rounds: 2.0)
    frames = [np.zeros((1080, 1920, 3), np.uint8)] * 16
    timings = bench.run_benchmark(SHIPPED, SHIPPED, frames, threads=1, rounds=2)
    assert [names for names, _, _ in pairs] == [("session", "gridwatch"), ("gridwatch", "ultralytics")] * 2
    assert [batch for _, batch, _ in pairs] == [1, 1, 8, 8]
    assert {calls for _, _, calls in pairs} == {32}  # timed calls, the samples of each median
    names = {(t.name, t.batch) for t in timings}
    assert ("gridwatch_beside_ultralytics", 8) in names and ("session", 1) in names


def test_each_side_resizes_with_its_own_opencv_threads(monkeypatch) -> None:
    """Importing Ultralytics sets OpenCV to one thread for the whole process; the service never
    imports it, so our detector is timed with OpenCV's default and Ultralytics with its own."""
    import cv2

    from serving.bench import detector as bench

    entered: list[tuple[str, int]] = []

    def recording(fns, batches, rounds, enter=None):  # noqa: ANN001, ANN202
        for name in fns:
            enter[name]()
            entered.append((name, cv2.getNumThreads()))
        return {name: 1.0 for name in fns}

    def ultralytics_import(model, detector):  # noqa: ANN001, ANN202
        cv2.setNumThreads(0)  # what `import ultralytics` does
        return lambda batch: None

    before = cv2.getNumThreads()  # another test may have imported Ultralytics already
    cv2.setNumThreads(-1)  # OpenCV's default: one per core
    default = cv2.getNumThreads()
    monkeypatch.setattr(bench, "time_in_blocks", recording)
    monkeypatch.setattr(bench, "ultralytics_fn", ultralytics_import)
    monkeypatch.setattr(bench, "time_per_frame", lambda fn, batches, rounds: 2.0)
    try:
        bench.run_benchmark(SHIPPED, SHIPPED, [np.zeros((1080, 1920, 3), np.uint8)] * 2, threads=1, rounds=1,
                            batch_sizes=(1,))
        assert default > 1
        assert entered == [("session", default), ("gridwatch", default), ("gridwatch", default), ("ultralytics", 1)]
        assert cv2.getNumThreads() == default  # the tiled check and whatever runs next
    finally:
        cv2.setNumThreads(before)


def test_compare_times_each_side_with_its_own_opencv_threads(monkeypatch) -> None:
    import cv2

    from serving.bench import detector as bench

    theirs_marker = object()
    timed: list[tuple[str, int]] = []

    def recording(fn, batches, rounds):  # noqa: ANN001, ANN202
        timed.append(("ultralytics" if fn is theirs_marker else "gridwatch", cv2.getNumThreads()))
        return 1.0

    def ultralytics_import(model, detector):  # noqa: ANN001, ANN202
        cv2.setNumThreads(0)
        return theirs_marker

    before = cv2.getNumThreads()
    cv2.setNumThreads(-1)
    default = cv2.getNumThreads()
    monkeypatch.setattr(bench, "ultralytics_fn", ultralytics_import)
    monkeypatch.setattr(bench, "time_per_frame", recording)
    try:
        rows = bench.compare_options([bench.Option.parse(str(SHIPPED))], [SHIPPED],
                                     [np.zeros((1080, 1920, 3), np.uint8)], threads=1, rounds=2)
        assert len(rows) == 1
        assert timed == [("gridwatch", default), ("ultralytics", 1)] * 2
        assert cv2.getNumThreads() == default
    finally:
        cv2.setNumThreads(before)
