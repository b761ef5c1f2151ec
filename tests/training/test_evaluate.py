"""`gridwatch eval`: the AP arithmetic, the folder and class mapping, the CLI, and agreement
with Ultralytics' own validator on the same model and data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.boxes import box_iou
from detector.detections import Detections
from tests.support.shared_data import COCO_INT8, DATASETS
from tests.support.training import export_coco, source_images
from training.evaluation.evaluate import EvalError, EvalSet, evaluate, load_eval_set, onnx_predictor
from training.evaluation.metrics import class_metrics, evaluate_predictions, match_predictions
from training.data.yolo_format import DataYaml, label_path, label_text, write_data_yaml


def test_ap_matches_ultralytics_ap_per_class_on_random_rankings():
    from training.offline import prepare

    prepare()
    from ultralytics.utils import metrics

    rng = np.random.default_rng(7)
    n, classes = 400, 4
    tp = rng.random((n, 10)) < np.linspace(0.8, 0.2, 10)  # harder thresholds hit less often
    conf = rng.random(n).astype(np.float32)
    pred_cls = rng.integers(0, classes, n)
    target_cls = rng.integers(0, classes, 150)
    ref = metrics.ap_per_class(tp, conf, pred_cls, target_cls)
    for k, c in enumerate(ref[6]):
        mine, _ = class_metrics(tp[pred_cls == c], conf[pred_cls == c], int((target_cls == c).sum()), 0.25)
        assert mine.ap50 == pytest.approx(ref[5][k, 0], abs=1e-4)
        assert mine.ap50_95 == pytest.approx(ref[5][k].mean(), abs=1e-4)


def test_matching_is_greedy_by_score_and_one_label_per_prediction():
    labels = np.array([[0, 0, 10, 10]], np.float64)
    preds = np.array([[0, 0, 10, 10], [0, 0, 10, 9]], np.float64)  # both overlap the one label
    iou = box_iou(labels, preds)
    correct = match_predictions(np.array([0, 0]), np.array([0]), iou)
    assert correct[0].all() and not correct[1].any()
    # a prediction of another class never matches
    assert not match_predictions(np.array([1]), np.array([0]), iou[:, :1]).any()


def _folder(tmp_path: Path, name: str, lines_per_image: dict[str, list[str]], names: dict) -> Path:
    root = tmp_path / name
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for stem, lines in lines_per_image.items():
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), np.full((100, 200, 3), 90, np.uint8))
        (root / "labels" / f"{stem}.txt").write_text("\n".join(lines))
    write_data_yaml(DataYaml(file=root / "data.yaml", root=Path("."), names=names, splits={"train": "images"}))
    return root


def _perfect(eval_set: EvalSet, names: dict[int, str]) -> list[Detections]:
    ids = {v: k for k, v in names.items()}
    return [
        Detections(im.boxes.astype(np.float32), np.full(len(im.boxes), 0.9, np.float32),
                   np.array([ids[c] for c in im.classes], np.int64), names)
        for im in eval_set.images
    ]


def test_source_mapping_applies_and_perfect_predictions_score_one(tmp_path):
    # Named like the shared source, so its dataset definition maps garbage -> garbage_pile etc.
    root = _folder(tmp_path, "garbage_overflow_cn",
                   {"a": ["0 0.5 0.5 0.2 0.4", "2 0.2 0.2 0.1 0.1"], "b": ["1 0.5 0.5 0.5 0.5"], "c": []},
                   {0: "garbage", 1: "garbage_bin", 2: "overflow"})
    es = load_eval_set(root)
    assert es.source == "garbage_overflow_cn"
    assert es.images[0].classes == ["garbage_pile", "bin_overflow"]
    np.testing.assert_allclose(es.images[0].boxes[0], [80, 30, 120, 70])  # normalised -> pixels (200x100)
    names = {0: "garbage_bin", 1: "bin_overflow", 2: "garbage_pile", 3: "person"}
    result = evaluate_predictions(es.images, _perfect(es, names))
    assert set(result.classes) == {"garbage_pile", "bin_overflow", "garbage_bin"}
    for m in result.classes.values():
        # 0.995 is the ceiling of 101-point interpolation with the closing sentinel, as in Ultralytics.
        assert m.ap50 == pytest.approx(0.995, abs=1e-3) and m.precision == 1.0 and m.recall == 1.0
    # Nothing predicted: AP 0, not an error, and the instances still counted.
    empty = evaluate_predictions(es.images, [Detections.empty(names) for _ in es.images])
    assert empty.map50 == 0 and empty.classes["garbage_pile"].instances == 1


def test_unknown_source_and_bad_labels_are_clear_errors(tmp_path):
    root = _folder(tmp_path, "somewhere", {"a": ["0 0.5 0.5 0.2"]}, {0: "garbage_bin"})
    with pytest.raises(EvalError, match="a.txt:1"):
        load_eval_set(root)
    with pytest.raises(EvalError, match="no source named"):
        load_eval_set(_folder(tmp_path, "other", {"a": []}, {0: "garbage_bin"}), source="nope")
    with pytest.raises(EvalError, match="data.yaml"):
        load_eval_set(tmp_path)


@pytest.fixture(scope="module")
def coco_export(tmp_path_factory):
    """Bootstrapped COCO .pt and its fp32 ONNX export at 640."""
    if not COCO_INT8.is_file():
        pytest.skip(f"{COCO_INT8} not found")
    tmp = tmp_path_factory.mktemp("coco")
    return tmp / "coco.pt", export_coco(tmp, int8=False).fp32


@pytest.fixture(scope="module")
def teacher_labelled(tmp_path_factory):
    """640x640 real street images labelled by the int8 COCO teacher (a model different from
    the fp32 rebuild, so AP is high but not 1); 640 px so neither side resizes."""
    from detector.runtime import Detector

    root = tmp_path_factory.mktemp("teacher") / "teacher_set"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    teacher = Detector(COCO_INT8, score_threshold=0.35)
    names = teacher.names
    boxes = 0
    for image in source_images("garbage_overflow_cn", 40):
        frame = cv2.imread(str(image))
        det = teacher(frame)
        boxes += len(det)
        (root / "images" / image.name).symlink_to(image)
        (root / "labels" / f"{image.stem}.txt").write_text(label_text(det.xyxy, det.class_ids, frame.shape[1::-1]))
    write_data_yaml(DataYaml(file=root / "data.yaml", root=root, names=dict(names),
                             splits={"train": "images", "val": "images"}))
    assert boxes >= 20
    return root


@pytest.mark.slow
def test_ap_agrees_with_ultralytics_val_on_same_model_and_data(coco_export, teacher_labelled):
    from training.offline import ultralytics_offline

    pt, onnx_path = coco_export
    YOLO = ultralytics_offline()
    ref = YOLO(str(pt)).val(data=str(teacher_labelled / "data.yaml"), imgsz=640, batch=1, conf=0.001,
                            iou=0.7, rect=False, plots=False, verbose=False, device="cpu")
    predict, _ = onnx_predictor(onnx_path)
    mine = evaluate(predict, load_eval_set(teacher_labelled))
    assert 0.3 < mine.map50 < 1.0  # a real, non-trivial ranking
    assert mine.map50 == pytest.approx(ref.box.map50, abs=0.02)
    assert mine.map50_95 == pytest.approx(ref.box.map, abs=0.02)
    ref_names = YOLO(str(pt)).names
    for c, ap50 in zip(ref.box.ap_class_index, ref.box.ap50):
        assert mine.classes[ref_names[int(c)]].ap50 == pytest.approx(ap50, abs=0.05)


@pytest.mark.slow
def test_eval_cli_json_and_plots_on_onnx(coco_export, teacher_labelled, tmp_path):
    _, onnx_path = coco_export
    plots = tmp_path / "plots"
    proc = subprocess.run(
        [sys.executable, "-m", "serving.cli", "eval", "--model", str(onnx_path), "--data", str(teacher_labelled),
         "--json", "--plots", str(plots)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert set(out) == {"classes", "map50", "map50_95", "split"}  # the split scored is named
    assert "person" in out["classes"]
    assert set(out["classes"]["person"]) == {"ap50", "ap50_95", "precision", "recall", "instances"}
    for name in ("PR_curve.png", "confusion_matrix.png"):
        image = cv2.imread(str(plots / name))
        assert image is not None and image.std() > 0


def test_eval_cli_rejects_missing_model_clearly(tmp_path):
    root = _folder(tmp_path, "garbage_overflow_cn", {"a": ["0 0.5 0.5 0.2 0.2"]}, {0: "garbage"})
    proc = subprocess.run(
        [sys.executable, "-m", "serving.cli", "eval", "--model", str(tmp_path / "none.onnx"), "--data", str(root)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_eval_cli_refuses_a_folder_none_of_whose_classes_the_model_has(tmp_path):
    """A copied source folder under another name has no definition to map its classes: every AP
    read 0 with nothing to say why."""
    root = _folder(tmp_path, "my-facades", {"a": ["0 0.5 0.5 0.2 0.2"]}, {0: "win_ad", 1: "door"})
    model = Path(__file__).resolve().parents[2] / "weights" / "gridwatch-int8.onnx"
    proc = subprocess.run([sys.executable, "-m", "serving.cli", "eval", "--model", str(model), "--data", str(root)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "none of the folder's classes (win_ad) is one of the model's" in proc.stderr


def test_real_source_folder_loads_with_its_definition():
    if not (DATASETS / "thela_india").is_dir():
        pytest.skip("shared datasets not found")
    es = load_eval_set(DATASETS / "thela_india")
    classes = {c for im in es.images for c in im.classes}
    assert "push_cart" in classes and "thela" not in classes


def test_eval_cli_tiles_reports_both_ways_on_real_facades(tmp_path):
    """`gridwatch eval --tiles` on real facade photos, with the shipped model as served."""
    root = tmp_path / "facade_signs_spb"  # the folder name picks the source's class mapping
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for image in source_images("facade_signs_spb", 3):
        (root / "images" / image.name).symlink_to(image)
        (root / "labels" / f"{image.stem}.txt").symlink_to(label_path(image, image.parent))
    (root / "data.yaml").write_text((DATASETS / "facade_signs_spb" / "data.yaml").read_text())
    model = Path(__file__).resolve().parents[2] / "weights" / "gridwatch-int8.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "serving.cli", "eval", "--model", str(model), "--data", str(root), "--tiles", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"whole_frame", "tiled", "split", "tiled_source_files", "tiled_sources_unavailable"}
    assert out["split"] == "train"  # the folder's only split
    assert out["tiled_source_files"] == 0 == out["tiled_sources_unavailable"]  # no build manifest: tiled as found
    for way in (out["whole_frame"], out["tiled"]):
        assert way["classes"]["shop_sign"]["instances"] > 0 and 0 <= way["map50"] <= 1
    table = subprocess.run(
        [sys.executable, "-m", "serving.cli", "eval", "--model", str(model), "--data", str(root), "--tiles", "640"],
        capture_output=True, text=True, timeout=300,
    )
    assert table.returncode == 0 and "whole frame:" in table.stdout and "tiles of 640 px" in table.stdout


def test_tiled_eval_reads_a_builds_larger_source_files_and_scales_back(tmp_path):
    """A build stores real images at most 640 px; tiling "at native resolution" means the
    source's own file, as a camera's full frame. Only a source file with the content the build
    hashed and the copy's shape stands in for it."""
    import hashlib

    from training.data.dataset_manifest import BuildSettings, DatasetManifest, LabelCounts, RealImage, write_manifest
    from training.evaluation.evaluate import source_originals

    root = tmp_path / "facade_signs_spb"  # the source's class mapping applies
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    entries = []
    originals = source_images("facade_signs_spb", 4)
    for i, original in enumerate(originals):
        copy = root / "images" / "val" / f"facade_signs_spb__{original.name}"
        frame = cv2.imread(str(original))
        scale = 1.0 if i == 3 else 384 / max(frame.shape[:2])  # the last one stored as found
        cv2.imwrite(str(copy), cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
        (root / "labels" / "val" / f"{copy.stem}.txt").write_text(label_path(original, original.parent).read_text())
        sha = hashlib.sha256(original.read_bytes()).hexdigest() if i != 2 else "0" * 64  # 2: the source changed
        entries.append(RealImage(file=f"val/{copy.name}", source="facade_signs_spb", original=str(original),
                                 split="val", sha256=sha, phash="0" * 16, cluster=i, boxes=1,
                                 pseudo_labelled_classes=[], pseudo_boxes=0))
    (root / "data.yaml").write_text((DATASETS / "facade_signs_spb" / "data.yaml").read_text()
                                    .replace("train: images", "val: images/val"))
    settings = BuildSettings(val_fraction=0.15, pseudo_labels=False, pseudo_score=None, teacher=None, synthetic=0,
                             imgsz=384, limit=None, seed=0, near_duplicate_distance=6)
    write_manifest(DatasetManifest(classes=[], sources=[], options=settings, counts=LabelCounts(), dataset_hash="",
                                   images=entries), root / "manifest.json")

    eval_set = load_eval_set(root)
    found = source_originals(eval_set)
    by_name = {p.name: o for p, o in found.files.items()}
    assert by_name == {f"facade_signs_spb__{o.name}": o for o in originals[:2]} and found.unavailable == 1
    assert "2 of 4 images read from their larger source file, 1 copy whose source" in found.line(4)

    # A predictor that puts each label exactly where it is in whatever frame it is given: only boxes
    # scaled back from the source file's pixels to the copy's match the copy's labels.
    names = {i: c for i, c in enumerate(sorted({c for im in eval_set.images for c in im.classes}))}
    ids = {c: i for i, c in names.items()}
    seen = []
    labels = iter(eval_set.images)

    def predict(frame: np.ndarray) -> Detections:
        image = next(labels)
        seen.append(frame.shape[:2])
        h, w = cv2.imread(str(image.path)).shape[:2]
        boxes = image.boxes * np.array([frame.shape[1] / w, frame.shape[0] / h] * 2, np.float32)
        return Detections(boxes.astype(np.float32), np.full(len(boxes), 0.9, np.float32),
                          np.array([ids[c] for c in image.classes], np.int64), names)

    result = evaluate(predict, eval_set, originals=found.files)
    read_from = [found.files.get(im.path, im.path) for im in eval_set.images]
    assert seen == [cv2.imread(str(p)).shape[:2] for p in read_from]
    assert sorted(max(shape) for shape in seen)[0] == 384 < sorted(max(shape) for shape in seen)[1]  # changed: its copy
    assert all(m.ap50 == pytest.approx(0.995, abs=1e-3) for m in result.classes.values() if m.instances)
