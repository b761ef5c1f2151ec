"""`gridwatch eval` names the split it scored, warns when the images were the model's training
images, shows progress, and saves each image's false positives and misses, worst first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from detector.detections import Detections
from detector.files import REPO_ROOT
from serving.cli import main
from tests.support.shared_data import DATASETS
from training.data.dataset_build import BuildOptions, build
from training.evaluation.eval_audit import Recorder, image_errors
from training.evaluation.evaluate import EvalSet
from training.evaluation.metrics import LabelledImage
from training.data.sources import load_source

SHIPPED = REPO_ROOT / "weights" / "gridwatch-int8.onnx"
pytestmark = pytest.mark.skipif(not DATASETS.is_dir() or not SHIPPED.is_file(), reason="shared data or weights missing")


def test_errors_per_image_match_once_per_box_and_sort_worst_first():
    names = {0: "garbage_bin", 1: "bin_overflow", 2: "car"}
    good = LabelledImage(path=Path("a.jpg"), boxes=np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32),
                         classes=["garbage_bin", "bin_overflow"])
    clean = LabelledImage(path=Path("b.jpg"), boxes=np.array([[0, 0, 10, 10]], np.float32), classes=["garbage_bin"])
    found = [
        Detections(xyxy=np.array([[0, 0, 10, 10], [1, 0, 10, 10], [50, 50, 60, 60], [20, 20, 40, 40]], np.float32),
                   scores=np.array([0.9, 0.8, 0.7, 0.1], np.float32), class_ids=np.array([0, 0, 2, 1]), names=names),
        Detections(xyxy=np.array([[0, 0, 10, 10]], np.float32), scores=np.array([0.6], np.float32),
                   class_ids=np.array([0]), names=names),
    ]
    errors = image_errors(EvalSet(root=Path("."), source="t", images=[clean, good], dropped_labels=0),
                          found[::-1], threshold=0.25)
    worst, best = errors
    assert worst.image == "a.jpg" and best.image == "b.jpg" and best.count == 0 and best.hits == 1
    # the duplicate of a found bin and the car are false positives; the overflow below threshold is missed
    assert [(f["class"], f["score"]) for f in worst.false_positives] == [("garbage_bin", 0.8), ("car", 0.7)]
    assert [m["class"] for m in worst.misses] == ["bin_overflow"] and worst.hits == 1


def test_progress_lines_while_scoring():
    lines = []
    recorder = Recorder(lambda frame: Detections.empty(), total=3, log=lines.append, every_s=0)
    for _ in range(3):
        recorder(np.zeros((4, 4, 3), np.uint8))
    assert lines and lines[0].startswith("  scored 1/3 images")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny build of real images, and the shipped model stamped as trained on it."""
    import onnx

    tmp = tmp_path_factory.mktemp("eval-audit")
    build(BuildOptions(sources=[load_source("garbage_overflow_cn", DATASETS)], out=tmp / "data", limit=8,
                       pseudo_labels=False, val_fraction=0.3), log=lambda _: None)
    proto = onnx.load(str(SHIPPED))
    for prop in proto.metadata_props:
        if prop.key == "gridwatch_train_args":
            prop.value = json.dumps({**json.loads(prop.value), "data": str(tmp / "data" / "data.yaml")})
    onnx.save(proto, str(tmp / "model.onnx"))
    return tmp


def test_split_is_named_and_chosen(built, capsys):
    assert main(["eval", "--model", str(built / "model.onnx"), "--data", str(built / "data"), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["split"] == "val"
    assert "scoring the val split" in captured.err and "WARNING" not in captured.err
    assert main(["eval", "--model", str(built / "model.onnx"), "--data", str(built / "data"), "--split", "test"]) == 2
    assert "no 'test' split" in capsys.readouterr().err


def test_training_images_are_flagged(built, capsys, tmp_path):
    assert main(["eval", "--model", str(built / "model.onnx"), "--data", str(built / "data"), "--split", "train"]) == 0
    captured = capsys.readouterr()
    assert "split: train" in captured.out and "NOT held out" in captured.out
    assert "are in the model's training set" in captured.err
    # the source folder itself (the originals, train and val together): found by content
    source = tmp_path / "garbage"
    (source / "images").mkdir(parents=True)
    train = [json.loads((built / "data" / "manifest.json").read_text())["images"][i] for i in range(8)]
    originals = [Path(im["original"]) for im in train if im["split"] == "train"][:2]
    for path in originals:
        shutil.copyfile(path, source / "images" / path.name)
    shutil.copytree(DATASETS / "garbage_overflow_cn" / "labels", source / "labels",
                    ignore=lambda d, names: [n for n in names if n[:-4] not in {p.stem for p in originals}])
    (source / "data.yaml").write_text("names: {0: garbage, 1: garbage_bin, 2: overflow}\n")
    assert main(["eval", "--model", str(built / "model.onnx"), "--data", str(source), "--source",
                 "garbage_overflow_cn"]) == 0
    captured = capsys.readouterr()
    assert "split: images/" in captured.out
    assert f"WARNING: {len(originals)} of {len(originals)} images scored are in the model's training set" in captured.err


def test_save_errors_writes_worst_first_with_images(built, tmp_path, capsys):
    out = tmp_path / "errors"
    assert main(["eval", "--model", str(built / "model.onnx"), "--data", str(built / "data"),
                 "--save-errors", str(out)]) == 0
    report = json.loads((out / "errors.json").read_text())
    assert report["split"] == "val"
    counts = [e["errors"] for e in report["worst_first"]]
    assert counts == sorted(counts, reverse=True) and all(c > 0 for c in counts)
    assert len(list(out.glob("*.jpg"))) == report["images_with_errors"]
    # each labelled box is either found or missed, exactly once
    from training.evaluation.evaluate import load_eval_set

    truth = {str(im.path): len(im.classes) for im in load_eval_set(built / "data").images}
    for e in report["worst_first"]:
        assert e["hits"] + len(e["misses"]) == truth[e["image"]]
