"""Why `gridwatch eval` and Ultralytics' val disagree on a class with few boxes (issue #27: garbage_bin
AP50 0.433 there, 0.047 here, same best.pt and images): Ultralytics' validator keeps every box
under each class scoring above conf=0.001 (NMS with multi_label=True), so an object the model
calls "bin_overflow" is also ranked as a low-score "garbage_bin". The served detector gives each
box one class, and gridwatch eval scores what is served. With one label per box on both sides,
the two agree class by class, few-box classes included."""

from __future__ import annotations

import cv2
import pytest

from tests.support.shared_data import COCO_INT8, DATASETS
from tests.support.training import bootstrapped_pt, source_images
from training.evaluation.evaluate import evaluate, load_eval_set, ultralytics_predictor
from training.evaluation.metrics import FEW_INSTANCES
from training.data.yolo_format import DataYaml, label_text, write_data_yaml

pytestmark = pytest.mark.skipif(not COCO_INT8.is_file() or not DATASETS.is_dir(), reason="shared data missing")
IMGSZ = 320


def test_eval_equals_ultralytics_val_with_one_label_per_box_on_few_box_classes(tmp_path, monkeypatch):
    from detector.runtime import Detector
    from training.offline import ultralytics_offline

    pt = bootstrapped_pt(tmp_path / "coco.pt", n_images=4)
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    teacher = Detector(COCO_INT8, score_threshold=0.3)  # another model than the rebuild: AP is not 1
    # 640x640 photos: the letterbox is the same square for predict and for val
    for image in source_images("garbage_overflow_cn", 40):
        frame = cv2.imread(str(image))
        found = teacher(frame)
        (root / "images" / image.name).symlink_to(image)
        (root / "labels" / f"{image.stem}.txt").write_text(label_text(found.xyxy, found.class_ids, frame.shape[1::-1]))
    write_data_yaml(DataYaml(file=root / "data.yaml", root=root, names=dict(teacher.names),
                             splits={"train": "images", "val": "images"}))

    mine = evaluate(ultralytics_predictor(pt, IMGSZ), load_eval_set(root))
    few = [name for name, m in mine.classes.items() if m.instances < FEW_INSTANCES]
    assert len(few) >= 2, "want classes with a handful of boxes"

    YOLO = ultralytics_offline()
    import ultralytics.models.yolo.detect.val as validator

    def val():
        r = YOLO(str(pt)).val(data=str(root / "data.yaml"), imgsz=IMGSZ, batch=1, conf=0.001, iou=0.7, rect=False,
                              plots=False, verbose=False, device="cpu")
        names = YOLO(str(pt)).names
        return {names[int(c)]: float(a) for c, a in zip(r.box.ap_class_index, r.box.ap50)}

    multi = val()
    one_label = validator.nms.non_max_suppression
    monkeypatch.setattr(validator.nms, "non_max_suppression",
                        lambda *a, **k: one_label(*a, **{**k, "multi_label": False}))
    single = val()
    for name, m in mine.classes.items():
        assert m.ap50 == pytest.approx(single[name], abs=0.02), name
    # Ultralytics' default (multi-label) moves per-class AP by more than that tolerance: the difference
    # the issue saw is the scoring rule, not the boxes
    assert any(abs(multi[n] - single[n]) > 0.02 for n in single)
