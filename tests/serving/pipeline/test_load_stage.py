"""The load decision wired into the pipeline (issue #28, item 4): with a trained classifier the
runner asks it about truck boxes only, the event carries its label and score, and
`muck_truck_uncovered` files only open loads (covered: not filed; cannot tell: to review).
Without one, every truck goes to review as before."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from detector import Detections, load_taxonomy
from detector.model import ModelLoadError
from detector.second_stage import CropClassifier
from serving.cameras import Camera
from serving.pipeline import Pipeline
from serving.streams.readers import Frame

T0 = datetime(2026, 5, 1, 2, 0, tzinfo=timezone.utc)
NAMES = {0: "person", 7: "truck"}
TRUCK = (100, 100, 300, 300)
PERSON = (400, 100, 460, 300)
# The test classifier reads the crop's colour: red -> open, green -> tarp, blue -> cannot_tell.
COLOURS_BGR = {"open": (0, 0, 230), "tarp": (0, 230, 0), "cannot_tell": (230, 0, 0)}


def colour_classifier(path: Path, labels=("open", "mesh", "tarp", "cannot_tell"), size: int = 16) -> Path:
    """A real ONNX classifier: the crop's mean R, G, B -> logits for open, tarp, cannot_tell."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.zeros((3, len(labels)), np.float32)
    for channel, label in enumerate(("open", "tarp", "cannot_tell")):  # RGB input
        weights[channel, labels.index(label)] = 8.0
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "colour", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", len(labels)])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"gridwatch_labels": json.dumps(list(labels)), "gridwatch_stage_class": "truck"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


class _Counting:
    """The classifier, recording how many boxes each call was given."""

    def __init__(self, stage: CropClassifier) -> None:
        self.inner, self.calls = stage, []
        self.stage, self.stage_class, self.labels = stage.stage, stage.stage_class, stage.labels

    def classify(self, frame, boxes):
        self.calls.append(len(boxes))
        return self.inner.classify(frame, boxes)


class _TruckAndPerson:
    """A detector that sees one truck and one person in every frame."""

    info = type("Info", (), {"version": "fake-1", "names": NAMES})()

    def detect(self, images):
        return [Detections(xyxy=np.array([TRUCK, PERSON], np.float32), scores=np.array([0.9, 0.9], np.float32),
                           class_ids=np.array([7, 0], np.int64), names=NAMES) for _ in images]


def _camera() -> Camera:
    return Camera.model_validate({
        "id": "cam-road", "source": "rtsp://unused", "division": "370202", "grid": "370202001001001",
        "zones": [{"name": "road", "type": "roadway", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
        "rules": [{"violation": "muck_truck_uncovered", "zone_types": ["roadway"]}]})


def _run(load: str, stages) -> list:
    pipeline = Pipeline([_camera()], _TruckAndPerson(), load_taxonomy(), motion_gating=False, crop_stages=stages)
    frame = np.full((360, 640, 3), 40, np.uint8)
    frame[TRUCK[1]:TRUCK[3], TRUCK[0]:TRUCK[2]] = COLOURS_BGR[load]
    events = []
    for s in (0, 2, 4):
        events += pipeline.process([Frame("cam-road", T0 + timedelta(seconds=s), frame, 0)])
    return events


@pytest.fixture
def stage(tmp_path) -> _Counting:
    return _Counting(CropClassifier(colour_classifier(tmp_path / "load.onnx")))


def test_open_load_is_filed_with_its_label_and_only_trucks_are_classified(stage) -> None:
    events = _run("open", [stage])
    assert [e.type for e in events][:1] == ["opened"]
    opened = events[0]
    assert opened.violation == "muck_truck_uncovered" and opened.needs_review is False
    assert opened.stage_label == "open" and 0.5 < opened.stage_score <= 1
    line = opened.to_json()
    assert line["stage_label"] == "open" and line["score"] == 0.9 and line["camera"] == "cam-road"
    assert stage.calls == [1, 1, 1]  # one box a frame: the truck's, never the person's


def test_covered_load_is_not_filed_and_cannot_tell_goes_to_review(stage) -> None:
    assert _run("tarp", [stage]) == []
    unsure = _run("cannot_tell", [stage])
    assert unsure[0].type == "opened" and unsure[0].needs_review is True and unsure[0].stage_label == "cannot_tell"


def test_without_a_classifier_every_truck_goes_to_review_as_before() -> None:
    for load in ("open", "tarp"):
        events = _run(load, [])
        assert events[0].type == "opened" and events[0].needs_review is True
        assert events[0].stage_label is None and "stage_label" not in events[0].to_json()  # the line as before


def test_the_setting_loads_the_classifier_into_the_detector(tmp_path) -> None:
    from serving.live_model import LiveDetector
    from serving.settings import Settings, load_detector
    from tests.support.shared_data import COCO_INT8, shared_available

    if not shared_available():
        pytest.skip("../shared weights not found")
    settings = Settings(model=COCO_INT8, load_classifier=colour_classifier(tmp_path / "load.onnx"))
    detector = load_detector(settings)
    assert set(detector.second_stage) == {"truck"} and detector.second_stage["truck"].stage == "load_decision"
    # The service runs it through its live (hot-swapped) detector; the pipeline finds it there.
    live = LiveDetector(detector, load=lambda path: load_detector(settings, model=path), smoke_frames=list)
    for seen_by in (detector, live):
        pipeline = Pipeline([_camera()], seen_by, load_taxonomy())
        assert set(pipeline.crop_stages) == {"load_decision"}
        assert pipeline.runtimes["cam-road"].rules.stage_classes == {"load_decision": frozenset({"truck"})}
    with pytest.raises(ModelLoadError, match="not a loadable ONNX classifier"):
        load_detector(Settings(model=COCO_INT8, load_classifier=tmp_path / "missing.onnx"))
