"""Review decisions become a dataset source: human labels where reviewers decided, pseudo-
labels of the current model for the rest of the frame, hard negatives for false alarms;
deterministic and incremental."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from detector import Detector, load_taxonomy
from serving.review_export import export_reviews
from tests.support.service import event_json, push

SHIPPED = Path(__file__).resolve().parents[3] / "weights" / "gridwatch-int8.onnx"


@pytest.fixture(scope="module")
def shipped_detector() -> Detector:
    return Detector(SHIPPED, threads=1)


def test_decisions_export_as_a_labelled_source(run_service, dataset_images, shipped_detector, tmp_path) -> None:
    server = run_service()
    numbers = []
    # Two cameras; boxes apart, so each event is a case of its own.
    boxes = [(60, 60, 400, 400), (60, 60, 400, 400), (420, 420, 630, 630), (420, 420, 630, 630), (20, 450, 200, 630)]
    with server.client(server.key("camera")) as camera:
        for i, box in enumerate(boxes):
            event = event_json(f"x{i}", camera=f"cam-{i % 2}", start_s=100 * i, end_s=100 * i + 90, box=box)
            numbers.append(push(camera, event, dataset_images[i]).json()["case_number"])
    assert len(set(numbers)) == 5
    cases = server.service.cases
    cases.review(numbers[0], "confirm", reviewer="amy", boxes=[[50, 70, 380, 420]])
    cases.review(numbers[1], "correct", reviewer="amy", violation="exposed_garbage")
    cases.review(numbers[2], "reject", reviewer="amy", reason="false_alarm")
    cases.review(numbers[3], "reject", reviewer="amy", reason="duplicate")
    # numbers[4] stays pending: not reviewed, not exported.
    out = tmp_path / "city_reviews"
    taxonomy = load_taxonomy()
    report = export_reviews(server.service.db, server.service.evidence, shipped_detector, taxonomy, out)
    assert len(report.written) == 3 and report.skipped == {"rejected duplicate": 1}
    manifest = json.loads((out / "manifest.json").read_text())
    names = manifest["names"]
    frames = {f["case_number"]: f for f in manifest["frames"].values()}
    assert set(frames) == set(numbers[:3])
    confirmed, corrected, false_alarm = (frames[n] for n in numbers[:3])
    assert confirmed["human"] == [["bin_overflow", [50.0, 70.0, 380.0, 420.0]]]  # the reviewer's own box
    assert [c for c, _ in corrected["human"]] == ["garbage_pile"]  # the class behind exposed_garbage
    assert false_alarm["human"] == [] and false_alarm["negatives"] == [["bin_overflow", [420.0, 420.0, 630.0, 630.0]]]
    for frame in (confirmed, corrected, false_alarm):
        label_file = out / "labels" / f"{frame['stem']}.txt"
        lines = [line.split() for line in label_file.read_text().splitlines()]
        assert len(lines) == len(frame["human"]) + len(frame["pseudo"])
        assert all(0 <= float(v) <= 1 for line in lines for v in line[1:])
        assert frame["model_version"] == shipped_detector.info.version
        # Nothing of a negative's class is labelled where the reviewer said it is not.
        for cls, box in frame["negatives"]:
            assert not any(c == cls and _iou(b, box) >= 0.5 for c, b in frame["pseudo"])
    image = next((out / "images").iterdir())
    original = server.service.evidence.resolve(
        next(e for e in cases.get(image.stem.rsplit("-", 1)[0]).evidence if e.kind == "original").path)
    assert image.read_bytes() == original.read_bytes()  # the evidence unaltered
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert list(data["names"].values()) == names
    definition = yaml.safe_load((out / "source.yaml").read_text())
    assert definition["format"] == "yolo" and "city's own" in definition["licence"]
    assert "cam-0" in definition["attribution"] and "cam-1" in definition["attribution"]
    assert set(report.labels_by_camera) == {"cam-0", "cam-1"}
    # Again: nothing written twice, nothing changed.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = export_reviews(server.service.db, server.service.evidence, shipped_detector, taxonomy, out)
    assert again.written == [] and again.already_there == 3
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # The command, filtered to one camera, into a fresh folder.
    cli = subprocess.run(
        [sys.executable, "-m", "serving.cli", "review", "export", "--out", str(tmp_path / "cam0"), "--camera", "cam-0",
         "--data-dir", str(server.service.settings.data_dir), "--model", str(SHIPPED)],
        capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    summary = json.loads(cli.stdout)
    assert summary["written"] == 2 and set(summary["labels_by_camera"]) == {"cam-0"}


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union else 0.0
