"""The second stage (issue #28, item 4): a crop classifier the detector runtime runs on the boxes
of one class only (the load decision on trucks), and the rule that, until one is trained for the
city, says so at start and sends every truck to review."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector import Detections, Detector, load_taxonomy
from detector.model import ModelLoadError
from detector.second_stage import LOAD_DECISION, LOAD_LABELS, CropClassifier, CropLabel
from tests.support.shared_data import COCO_INT8 as COCO
from tests.support.shared_data import DATASETS, shared_available


def classifier_file(path: Path, labels=LOAD_LABELS, stage_class: str | None = "truck", size: int = 32) -> Path:
    """A real ONNX classifier: mean colour of the crop -> linear -> one logit per label. Its weights
    make a bright crop `open` and a dark one `tarp`, so what it says depends on the pixels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.zeros((3, len(labels)), np.float32)
    weights[:, 0] = 4.0  # bright -> open
    weights[:, 2] = -4.0  # dark -> tarp
    bias = np.array([-2.0, 0.0, 2.0, 0.0][: len(labels)], np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["mm"]),
         helper.make_node("Add", ["mm", "b"], ["logits"])],
        "load", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", len(labels)])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"gridwatch_labels": json.dumps(list(labels))}
    if stage_class is not None:
        meta["gridwatch_stage_class"] = stage_class
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def test_classifier_labels_crops_by_their_pixels(tmp_path):
    stage = CropClassifier(classifier_file(tmp_path / "load.onnx"))
    frame = np.zeros((200, 400, 3), np.uint8)
    frame[:, 200:] = 240  # right half bright
    labels = stage.classify(frame, np.array([[10, 10, 150, 190], [250, 10, 390, 190]], np.float32))
    assert [c.label for c in labels] == ["tarp", "open"] and all(0.25 < c.score <= 1 for c in labels)
    assert stage.classify(frame, np.zeros((0, 4), np.float32)) == []


def test_a_classifier_without_its_labels_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="gridwatch_stage_class"):
        CropClassifier(classifier_file(tmp_path / "bare.onnx", stage_class=None))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX classifier"):
        CropClassifier(tmp_path / "junk.onnx")


@pytest.mark.skipif(not shared_available(), reason="../shared datasets/weights not found")
def test_detector_runs_the_stage_on_truck_boxes_only(tmp_path):
    stage = CropClassifier(classifier_file(tmp_path / "load.onnx"))
    detector = Detector(COCO, threads=1, second_stage=[stage])
    frame = cv2.imread(str(sorted((DATASETS / "thela_india" / "images").glob("train_picture_14.*"))[0]))
    found = detector.detect([frame])[0]
    names = found.class_names
    assert "truck" in names and any(n != "truck" for n in names)  # a real street: trucks among others
    labels = detector.classify_crops(frame, found)
    assert sorted(labels) == [i for i, n in enumerate(names) if n == "truck"]
    assert {c.label for c in labels.values()} <= set(LOAD_LABELS)
    with pytest.raises(ModelLoadError, match="no such class"):
        Detector(COCO, threads=1, second_stage=[CropClassifier(classifier_file(tmp_path / "x.onnx",
                                                                              stage_class="dump_truck"))])


def _truck_rule_engine(stages=()):
    from serving.cameras import Camera
    from serving.pipeline.rules import RuleEngine

    camera = Camera.model_validate({
        "id": "cam-road", "source": "rtsp://unused", "division": "370202", "grid": "370202001001001",
        "zones": [{"name": "road", "type": "roadway", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
        "rules": [{"violation": "muck_truck_uncovered", "zone_types": ["roadway"]}]})
    return RuleEngine(camera, load_taxonomy(), stages=stages)


def _truck_opened(engine, load: str | None = None) -> bool:
    """Whether the one truck's case needs review; `load`: the stage's label on each crop."""
    from serving.pipeline.tracking import IoUTracker
    from serving.pipeline.zones import ZoneMap

    t0 = datetime(2026, 5, 1, 2, 0, tzinfo=timezone.utc)
    tracker, zones = IoUTracker(max_age_s=30), ZoneMap(engine.camera.zones, 640, 360)
    dets = Detections(xyxy=np.array([[100, 100, 300, 300]], np.float32), scores=np.array([0.9], np.float32),
                      class_ids=np.array([7], np.int64), names={7: "truck"})
    frame = np.zeros((360, 640, 3), np.uint8)
    opened = []
    for s in (0, 2, 4):
        when = t0 + timedelta(seconds=s)
        tracks = tracker.update(dets, when)
        labels = {LOAD_DECISION: {t.id: CropLabel(load, 0.9) for t in tracks}} if load else None
        opened += [t for t in engine.update(tracks, zones, when, frame, crop_labels=labels) if t.type == "opened"]
    assert len(opened) == 1
    return opened[0].candidate.needs_review


def test_untrained_load_stage_is_said_at_start_and_sends_every_truck_to_review(caplog):
    assert load_taxonomy()["muck_truck_uncovered"].second_stage == LOAD_DECISION
    with caplog.at_level(logging.WARNING, logger="serving.pipeline.rules"):
        engine = _truck_rule_engine()
    assert any("load_decision stage is not trained" in r.getMessage() and "cam-road" in r.getMessage()
               for r in caplog.records)
    assert _truck_opened(engine) is True
    # With the stage trained for the city, an open load is up to the rule's usual bar again (none
    # here: no review flag); a truck the stage never labelled still goes to a person.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="serving.pipeline.rules"):
        trained = _truck_rule_engine(stages={LOAD_DECISION})
    assert not caplog.records and _truck_opened(trained, "open") is False
    assert _truck_opened(_truck_rule_engine(stages={LOAD_DECISION})) is True
