"""Review decisions become a dataset source: human labels where reviewers decided, pseudo-
labels of the current model for the rest of the frame, hard negatives for false alarms;
deterministic and incremental."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from detector import Detector, load_taxonomy
from serving.review_export import PSEUDO_SCORE, export_reviews
from serving.store.models import Case
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
    for frame in (confirmed, corrected, false_alarm):
        assert frame["cases"] == [frame["case_number"]]  # one case on each of these frames
        original = next(e for e in cases.get(frame["case_number"]).evidence if e.kind == "original")
        assert frame["stem"] == f"{frame['camera']}-{original.sha256[:16]}" and frame["sha256"] == original.sha256
        image = next((out / "images").glob(f"{frame['stem']}.*"))
        assert image.read_bytes() == server.service.evidence.resolve(original.path).read_bytes()  # unaltered
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert list(data["names"].values()) == names
    definition = yaml.safe_load((out / "source.yaml").read_text())
    assert definition["format"] == "yolo" and "city's own" in definition["licence"]
    assert "cam-0" in definition["attribution"] and "cam-1" in definition["attribution"]
    assert set(report.labels_by_camera) == {"cam-0", "cam-1"}
    # Again: nothing written twice, nothing changed.
    before = _files(out)
    again = export_reviews(server.service.db, server.service.evidence, shipped_detector, taxonomy, out)
    assert again.written == [] and again.relabelled == [] and again.already_there == 3
    assert _files(out) == before
    # The command, filtered to one camera, into a fresh folder.
    cli = subprocess.run(
        [sys.executable, "-m", "serving.cli", "review", "export", "--out", str(tmp_path / "cam0"), "--camera", "cam-0",
         "--data-dir", str(server.service.settings.data_dir), "--model", str(SHIPPED)],
        capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    summary = json.loads(cli.stdout)
    assert summary["written"] == 2 and set(summary["labels_by_camera"]) == {"cam-0"}


def test_cases_on_one_frame_export_one_image_with_all_their_labels(run_service, dataset_images, shipped_detector,
                                                                   tmp_path) -> None:
    """Two cases on one real frame: a confirmed one, and a false alarm rejected later through the
    API. One image; its labels are rewritten when the second decision arrives, the image is not."""
    import cv2

    names = [shipped_detector.names[i] for i in sorted(shipped_detector.names)]
    image, alarm_box = _frame_with_a_detected_bin(dataset_images, shipped_detector)
    h, w = cv2.imread(str(image)).shape[:2]
    # The confirmed object: the quarter of the frame farthest from the detected bin.
    cx, cy = (alarm_box[0] + alarm_box[2]) / 2, (alarm_box[1] + alarm_box[3]) / 2
    x0, y0 = (0.0 if cx > w / 2 else w / 2), (0.0 if cy > h / 2 else h / 2)
    confirmed_box = [round(x0 + w / 16, 1), round(y0 + h / 16, 1), round(x0 + w * 7 / 16, 1), round(y0 + h * 7 / 16, 1)]
    assert _iou(confirmed_box, alarm_box) == 0
    server = run_service()
    with server.client(server.key("camera")) as camera:
        numbers = [push(camera, event_json(f"same-{i}", camera="cam-0", box=box), image).json()["case_number"]
                   for i, box in enumerate((confirmed_box, alarm_box))]
    cases = server.service.cases
    shas = {next(e.sha256 for e in cases.get(n).evidence if e.kind == "original") for n in numbers}
    assert len(set(numbers)) == 2 and len(shas) == 1  # two cases, one original frame
    cases.review(numbers[0], "confirm", reviewer="amy", boxes=[confirmed_box])
    taxonomy = load_taxonomy()
    out = tmp_path / "reviews"
    first = export_reviews(server.service.db, server.service.evidence, shipped_detector, taxonomy, out)
    assert len(first.written) == 1 and first.relabelled == []
    stem = first.written[0]
    labels = _label_boxes(out / "labels" / f"{stem}.txt", names, w, h)
    # Before the second decision the detected bin is a pseudo-label: the model's word stands there.
    assert any(c == "bin_overflow" and _iou(b, alarm_box) >= 0.5 for c, b in labels)

    # The second case, rejected as a false alarm through /v1 with its reason.
    decided = datetime.now(timezone.utc)
    with server.client(server.key("reviewer")) as api:
        answer = api.post(f"/v1/cases/{numbers[1]}/review", json={"action": "reject", "reason": "false_alarm"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["review_status"] == "rejected"
    before = _files(out)
    second = export_reviews(server.service.db, server.service.evidence, shipped_detector, taxonomy, out, since=decided)
    assert second.written == [] and second.relabelled == [stem]
    after = _files(out)
    images = [p for p in after if p.parent.name == "images"]
    assert set(after) == set(before) and len(images) == 1  # no new file, the one image
    assert after[images[0]] == before[images[0]]  # the image not written again (bytes and time)
    assert after[out / "labels" / f"{stem}.txt"] != before[out / "labels" / f"{stem}.txt"]
    frame = json.loads((out / "manifest.json").read_text())["frames"][stem]
    assert frame["cases"] == numbers and frame["case_number"] == numbers[0]
    assert frame["decisions"] == ["confirmed", "rejected:false_alarm"]
    assert frame["negatives"] == [["bin_overflow", alarm_box]]
    labels = _label_boxes(out / "labels" / f"{stem}.txt", names, w, h)
    assert any(c == "bin_overflow" and _iou(b, confirmed_box) > 0.99 for c, b in labels)  # the confirmed box
    assert not any(c == "bin_overflow" and _iou(b, alarm_box) >= 0.5 for c, b in labels)  # absent where rejected
    assert len(labels) == len(frame["human"]) + len(frame["pseudo"])

    # The same decisions in one run give the same files.
    fresh = tmp_path / "fresh" / out.name  # source.yaml names its folder
    export_reviews(server.service.db, server.service.evidence, shipped_detector, taxonomy, fresh)
    assert {p.relative_to(fresh): data for p, (data, _) in _files(fresh).items()} == {
        p.relative_to(out): data for p, (data, _) in after.items()}

    # Nothing new: no file changes, not even its time.
    third = export_reviews(server.service.db, server.service.evidence, shipped_detector, taxonomy, out)
    assert third.written == third.relabelled == [] and third.already_there == 1
    assert _files(out) == after

    # Both decisions taken back: a duplicate and a bad image teach nothing, so the frame leaves
    # the folder again (image, labels and manifest entry); the next run has nothing to do.
    redecided = datetime.now(timezone.utc)
    for number, reason in ((numbers[0], "duplicate"), (numbers[1], "bad_image")):
        cases.redecide(number, "reject", reviewer="amy", why="looked again", reason=reason,
                       version=cases.get(number).version)
    fourth = export_reviews(server.service.db, server.service.evidence, shipped_detector, taxonomy, out,
                            since=redecided)
    assert fourth.withdrawn == [stem] and fourth.written == fourth.relabelled == []
    assert not [p for p in _files(out) if p.stem == stem]
    assert stem not in json.loads((out / "manifest.json").read_text())["frames"]
    fifth = export_reviews(server.service.db, server.service.evidence, shipped_detector, taxonomy, out)
    assert fifth.withdrawn == fifth.written == [] and not [p for p in _files(out) if p.stem == stem]


def test_api_review_takes_the_pages_reason_and_boxes(run_service, dataset_images) -> None:
    server = run_service()
    with server.client(server.key("camera")) as camera:
        number = push(camera, event_json("api-1"), dataset_images[0]).json()["case_number"]
    with server.client(server.key("reviewer")) as api:
        review = f"/v1/cases/{number}/review"
        for body in ({"action": "confirm", "reason": "false_alarm"}, {"action": "reject", "reason": "no_such_reason"},
                     {"action": "confirm", "boxes": [[10, 10, 5, 50]]}, {"action": "confirm", "boxes": [[1, 2, 3]]},
                     {"action": "reject", "reason": "false\x00alarm"}):
            refused = api.post(review, json=body)
            assert refused.status_code == 422 and refused.json()["detail"], (body, refused.text)
        assert server.service.cases.get(number).review_status == "pending"  # nothing half-applied
        done = api.post(review, json={"action": "confirm", "boxes": [[10, 20, 110, 220.04]]})
        assert done.status_code == 200, done.text
        assert api.post(review, json={"action": "confirm"}).status_code == 409  # decided: re-decide instead
        again = api.post(f"/v1/cases/{number}/redecide", json={"action": "confirm", "why": "the box was wrong",
                                                                "version": done.json()["version"]})
        assert again.status_code == 200, again.text  # reason and boxes optional here too
    with server.service.db.sessions() as session:
        case = session.scalars(select(Case).where(Case.case_number == number)).one()
        assert case.review_boxes is None and case.review_reason == ""  # the last decision: no boxes, no reason


def _frame_with_a_detected_bin(images, detector) -> tuple[Path, list[float]]:
    """A real frame and a bin_overflow the model finds in it above the pseudo-label score."""
    import cv2

    for image in images[:40]:
        seen = detector.detect([cv2.imread(str(image))])[0]
        found = [[round(float(v), 1) for v in box] for box, cls, score in zip(seen.xyxy, seen.class_names, seen.scores)
                 if cls == "bin_overflow" and score >= PSEUDO_SCORE]
        if found:
            return image, found[0]
    pytest.skip("no frame with a confidently detected bin_overflow")


def _label_boxes(path: Path, names: list[str], width: int, height: int) -> list[tuple[str, list[float]]]:
    out = []
    for line in path.read_text().splitlines():
        cls, cx, cy, bw, bh = line.split()
        cx, cy, bw, bh = float(cx) * width, float(cy) * height, float(bw) * width, float(bh) * height
        out.append((names[int(cls)], [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]))
    return out


def _files(folder: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union else 0.0


def test_a_correction_never_keeps_the_models_contradicting_box() -> None:
    """exposed_garbage corrected to bin_overflow: the reviewer's bin_overflow box is the label, and
    the model's garbage_pile box on the same object is not kept as a pseudo-label beside it; the
    model's boxes of other objects (a person, a bin elsewhere) still are."""
    import numpy as np

    from detector.detections import Detections
    from serving.review_export import frame_labels

    taxonomy = load_taxonomy()
    names = taxonomy.all_detector_classes
    ids = {n: i for i, n in enumerate(names)}
    seen = Detections(
        xyxy=np.array([[100, 100, 300, 300], [102, 98, 301, 303], [400, 50, 460, 200], [500, 300, 600, 400]],
                      np.float32),
        scores=np.array([0.9, 0.7, 0.8, 0.85], np.float32),
        class_ids=np.array([ids["garbage_pile"], ids["garbage_bin"], ids["person"], ids["garbage_bin"]]),
        names=dict(enumerate(names)))
    corrected = Case(case_number="GW20261205-ABCDEF-000001", camera="cam-1", violation="bin_overflow",
                     box=[100.0, 100.0, 300.0, 300.0], review_status="corrected", review_reason="",
                     review_boxes=[[100.0, 100.0, 300.0, 300.0]], reviewed_at=datetime(2026, 12, 5, tzinfo=timezone.utc))
    labels = frame_labels([corrected], seen, taxonomy, names, "cam-1-abc", "abc")
    assert labels.human == [("bin_overflow", [100.0, 100.0, 300.0, 300.0])]
    assert [c for c, _ in labels.pseudo] == ["person", "garbage_bin"]  # the other objects only
    assert all(_iou(b, [100, 100, 300, 300]) < 0.5 for _, b in labels.pseudo)


def test_an_export_never_lands_in_a_folder_it_did_not_write(tmp_path) -> None:
    """--out naming another dataset once replaced its data.yaml with gridwatch's classes."""
    from types import SimpleNamespace

    from serving.review_export import export_reviews, foreign_folder

    dataset = tmp_path / "facades"
    dataset.mkdir()
    (dataset / "data.yaml").write_text("names: {0: window, 1: door}\n", encoding="utf-8")
    detector = SimpleNamespace(names={0: "person"})
    with pytest.raises(ValueError, match="no review export wrote"):
        export_reviews(None, None, detector, None, dataset)
    assert sorted(p.name for p in dataset.iterdir()) == ["data.yaml"]
    assert (dataset / "data.yaml").read_text(encoding="utf-8") == "names: {0: window, 1: door}\n"
    (tmp_path / "a-file").write_text("x")
    assert "is a file" in foreign_folder(tmp_path / "a-file")
    (tmp_path / "empty").mkdir()
    assert foreign_folder(tmp_path / "empty") is None and foreign_folder(tmp_path / "new") is None
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "manifest.json").write_text('{"frames": {}}')
    assert foreign_folder(tmp_path / "earlier") is None
