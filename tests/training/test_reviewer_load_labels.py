"""Issue #28, item 4: the load a reviewer said on a truck case reaches `gridwatch second-stage
train`: stored with the decision -> `gridwatch review export` writes it beside the case's box
(`loads`) -> the training examples take it over what confirm or reject would imply."""

from __future__ import annotations

import json

from detector import Detector, load_taxonomy
from serving.review_export import export_reviews
from tests.support.service import event_json, push
from tests.support.shared_data import COCO_INT8, require_shared
from training.second_stage.examples import ReadReport, load_examples


def test_reviewer_load_label_reaches_the_training_examples(run_service, dataset_images, tmp_path) -> None:
    require_shared()
    teacher = Detector(COCO_INT8, threads=1)  # has a "truck" class, as the load decision needs
    server = run_service()
    boxes = {"said_tarp": (60, 60, 400, 400), "said_nothing": (60, 60, 400, 400), "said_open": (60, 60, 400, 400)}
    numbers = {}
    with server.client(server.key("camera")) as camera:
        for i, name in enumerate(boxes):
            event = event_json(name, camera=f"cam-road-{i}", violation="muck_truck_uncovered",
                               matter_code="37020208011", zone="road", zone_type="roadway", box=boxes[name])
            numbers[name] = push(camera, event, dataset_images[i]).json()["case_number"]
    with server.client(server.key("reviewer")) as http:
        # Confirmed, but the reviewer says the load was under a tarp: the label, not "open", is learnt.
        assert http.post(f"/v1/cases/{numbers['said_tarp']}/review",
                         json={"action": "confirm", "load_label": "tarp"}).status_code == 200
        assert http.post(f"/v1/cases/{numbers['said_nothing']}/review",
                         json={"action": "confirm"}).status_code == 200
        # Rejected as not a violation here (inferred: covered), but the reviewer says open.
        assert http.post(f"/v1/cases/{numbers['said_open']}/review",
                         json={"action": "reject", "reason": "not_here", "load_label": "open"}).status_code == 200
    export = tmp_path / "city_reviews"
    export_reviews(server.service.db, server.service.evidence, teacher, load_taxonomy(), export)
    frames = {f["case_number"]: f for f in json.loads((export / "manifest.json").read_text())["frames"].values()}
    assert frames[numbers["said_tarp"]]["loads"] == [["tarp", [60.0, 60.0, 400.0, 400.0]]]
    assert frames[numbers["said_nothing"]]["loads"] == []
    assert frames[numbers["said_open"]]["loads"] == [["open", [60.0, 60.0, 400.0, 400.0]]]

    report = ReadReport()
    examples = load_examples([export], None, report)
    by_case = {next(n for n, f in frames.items() if f["stem"] == ex.stem): (ex.label, ex.reason) for ex in examples}
    assert by_case == {numbers["said_tarp"]: ("tarp", "reviewer"), numbers["said_nothing"]: ("open", ""),
                       numbers["said_open"]: ("open", "reviewer")}
    assert len(examples) == 3  # each truck once: the reviewer's label replaces the inference
