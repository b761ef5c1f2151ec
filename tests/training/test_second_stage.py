"""Second stages learnt from reviews (issue #28, item 4): review exports read as labelled crops,
held-out splits by frame, the small CNN trained and exported as the ONNX file the detector
runtime runs, and the false-alarm filter's threshold arithmetic. The end-to-end test on real
truck frames is tests/training/test_second_stage_loop.py."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.second_stage import CropClassifier
from training.second_stage.examples import (
    CONFIRMED, REJECTED, CropExample, ExportError, ReadReport, held_out_split, load_examples, read_load_labels,
    reviewed_objects,
)
from training.second_stage.false_alarms import removed_at_recall


def _export(folder: Path, frames: dict[str, dict]) -> Path:
    """A review export as `gridwatch review export` lays it out, with generated images."""
    (folder / "images").mkdir(parents=True)
    for stem in frames:
        cv2.imwrite(str(folder / "images" / f"{stem}.jpg"), np.full((120, 160, 3), 90, np.uint8))
    manifest = {"frames": {stem: {"stem": stem, "camera": "cam-1", "human": [], "pseudo": [], "negatives": [],
                                  **frame} for stem, frame in frames.items()}, "names": ["person", "truck"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


TRUCK = [10.0, 10.0, 90.0, 90.0]


def test_decisions_become_loads_and_mixed_frames_are_left_out(tmp_path) -> None:
    export = _export(tmp_path / "reviews", {
        "a": {"decision": "cases", "decisions": ["confirmed"], "human": [["truck", TRUCK]]},
        "b": {"decision": "cases", "decisions": ["rejected:not_here"], "human": [["truck", TRUCK]]},
        "c": {"decision": "cases", "decisions": ["rejected:false_alarm"], "negatives": [["truck", TRUCK]]},
        "d": {"decision": "cases", "decisions": ["confirmed", "rejected:not_here"],
              "human": [["truck", TRUCK], ["person", [100, 10, 150, 100]]]},
        "e": {"decision": "cases", "decisions": ["corrected"], "human": [["person", TRUCK]]},
        "label-1": {"decision": "labelled", "human": [["truck", TRUCK], ["truck", [100, 20, 150, 100]]]},
    })
    report = ReadReport()
    objects = reviewed_objects(export, report)
    assert {(o.stem, o.cls, o.label, o.reason) for o in objects} == {
        ("a", "truck", CONFIRMED, ""), ("b", "truck", REJECTED, "not_here"), ("c", "truck", REJECTED, "false_alarm"),
        ("e", "person", CONFIRMED, "")}
    assert report.skipped == {"mixed decisions on one frame": 2}
    labels_file = tmp_path / "loads.json"
    labels_file.write_text(json.dumps({"label-1": ["tarp", "cannot_tell"]}))
    report = ReadReport()
    loads = load_examples([export], read_load_labels(labels_file), report)
    assert sorted((ex.stem, ex.label) for ex in loads) == [
        ("a", "open"), ("b", "covered"), ("label-1", "cannot_tell"), ("label-1", "tarp")]
    assert report.skipped["truck false alarm (no truck, no load)"] == 1
    # Labelled trucks without their loads are counted, never guessed.
    report = ReadReport()
    assert len(load_examples([export], None, report)) == 2
    assert report.skipped["labelled truck without a load label"] == 2


def test_bad_load_labels_and_exports_get_clear_errors(tmp_path) -> None:
    export = _export(tmp_path / "reviews", {"label-1": {"decision": "labelled", "human": [["truck", TRUCK]]}})
    with pytest.raises(ExportError, match="2 labels for 1 truck boxes"):
        load_examples([export], {"label-1": ["open", "tarp"]})
    with pytest.raises(ExportError, match="no export has"):
        load_examples([export], {"label-1": ["open"], "other": ["open"]})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"label-1": ["uncovered"]}))
    with pytest.raises(ExportError, match="unknown load 'uncovered'"):
        read_load_labels(bad)
    with pytest.raises(ExportError, match="not a review export"):
        reviewed_objects(tmp_path / "nowhere")


def test_held_out_split_keeps_frames_whole_and_holds_every_label() -> None:
    examples = [CropExample(Path("x.jpg"), (0, 0, 1, 1), "truck", label, f"f{i // 2}", "cam")
                for i, label in enumerate(["open"] * 12 + ["covered"] * 8 + ["tarp"] * 2)]
    train, held = held_out_split(examples, 0.25)
    assert len(train) + len(held) == len(examples)
    assert not {ex.stem for ex in train} & {ex.stem for ex in held}
    assert {ex.label for ex in held} == {"open", "covered"}  # tarp: one frame only, it trains
    assert held_out_split(examples, 0.25) == (train, held)  # the same every run
    with pytest.raises(ValueError):
        held_out_split(examples, 1.0)


def test_threshold_keeps_the_recall_and_counts_removed_rejections() -> None:
    confirmed = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1]
    rejected = [0.05, 0.12, 0.35, 0.95]
    threshold, kept, removed = removed_at_recall(confirmed, rejected, 0.9)
    assert (threshold, kept, removed) == (0.15, 9, 2)  # 9 of 10 kept; 0.05 and 0.12 removed
    assert removed_at_recall(confirmed, rejected, 1.0) == (0.1, 10, 1)


def test_trained_classifier_exports_what_the_runtime_runs(tmp_path) -> None:
    pytest.importorskip("torch")
    from training.second_stage.net import TrainOptions, crops, export_onnx, train

    folder = tmp_path / "img"
    folder.mkdir()
    examples = []
    rng = np.random.default_rng(0)
    for i in range(24):
        label = "open" if i % 2 else "covered"
        image = rng.integers(0, 60, (96, 96, 3), dtype=np.uint8)
        image[16:80, 16:80, 2 if label == "open" else 1] += 180  # open: a red bed; covered: a green tarp
        path = folder / f"{i}.png"
        cv2.imwrite(str(path), image)
        examples.append(CropExample(path, (16, 16, 80, 80), "truck", label, str(i), "cam"))
    labels = ["open", "covered"]
    options = TrainOptions(size=32, epochs=15, seed=0)
    net = train(crops(examples, 32), np.array([labels.index(ex.label) for ex in examples]), labels, options,
                log=lambda _: None)
    model = export_onnx(net, tmp_path / "load.onnx", labels, stage_class="truck", size=32)
    stage = CropClassifier(model)
    assert (stage.labels, stage.stage_class, stage.stage, stage.hw) == (("open", "covered"), "truck",
                                                                        "load_decision", (32, 32))
    said = [stage.classify(cv2.imread(str(ex.image)), np.array([ex.box], np.float32))[0].label for ex in examples]
    assert said == [ex.label for ex in examples]


def test_train_command_refuses_what_it_cannot_learn_from(tmp_path, capsys) -> None:
    from serving.cli import main as gridwatch

    export = _export(tmp_path / "reviews", {
        "a": {"decision": "cases", "decisions": ["confirmed"], "human": [["truck", TRUCK]]}})  # open only
    assert gridwatch(["second-stage", "train", "--review-export", str(export), "--out", str(tmp_path / "o")]) == 2
    assert "need reviewed trucks both open and covered" in capsys.readouterr().err
    assert gridwatch(["second-stage", "train", "--review-export", str(tmp_path / "none"), "--out",
                      str(tmp_path / "o")]) == 2
    assert "not a review export" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written
    assert gridwatch(["second-stage", "false-alarms", "--review-export", str(export), "--recall", "0"]) == 2
    assert "--recall" in capsys.readouterr().err
