"""`gridwatch dataset build`: validation catches each defect, splits keep near-duplicates together,
and a small real build is a dataset Ultralytics loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from serving.cli import main
from tests.support.shared_data import DATASETS
from training.data.dataset_build import (
    BuildError,
    BuildOptions,
    CheckedImage,
    Report,
    assign_splits,
    build,
    split_of,
)
from training.data.sources import gridwatch_classes, load_source

pytestmark = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"no shared datasets at {DATASETS}")


def real_images(n: int) -> list[Path]:
    return sorted((DATASETS / "facade_signs_spb" / "images").iterdir())[:n]


def read_labels(out: Path) -> dict[str, list[list[float]]]:
    rows = {}
    for f in (out / "labels").rglob("*.txt"):
        rows[f"{f.parent.name}/{f.stem}"] = [list(map(float, l.split())) for l in f.read_text().splitlines()]
    return rows


@pytest.fixture
def defective_source(tmp_path):
    """A COCO source with one of each defect, around real images."""
    data = tmp_path / "data" / "defects"
    images = data / "images"
    images.mkdir(parents=True)
    good, other, third = real_images(3)
    shutil.copyfile(good, images / "good.jpg")
    shutil.copyfile(good, images / "copy_of_good.jpg")  # exact duplicate
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    raw = other.read_bytes()
    (images / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    bgr = cv2.imread(str(third))
    h, w = bgr.shape[:2]
    cv2.imwrite(str(images / "base.jpg"), bgr)
    # A near-duplicate: the same photo slightly smaller and re-encoded.
    cv2.imwrite(str(images / "near.jpg"), cv2.resize(bgr, (w * 9 // 10, h * 9 // 10)), [cv2.IMWRITE_JPEG_QUALITY, 70])
    gw, gh = cv2.imread(str(images / "good.jpg")).shape[1::-1]

    entries = [("good.jpg", gw, gh), ("copy_of_good.jpg", gw, gh), ("corrupt.jpg", 100, 100),
               ("truncated.jpg", 100, 100), ("missing.jpg", 100, 100), ("base.jpg", w, h),
               ("near.jpg", w * 9 // 10, h * 9 // 10)]
    coco_images = [{"id": i, "file_name": f, "width": a, "height": b} for i, (f, a, b) in enumerate(entries, 1)]
    boxes = [
        (1, 1, [10, 10, 50, 40]),  # fine
        (1, 1, [gw - 20, 5, 60, 30]),  # runs off the right edge: clipped
        (1, 1, [gw + 10, 5, 20, 20]),  # entirely outside: dropped
        (1, 1, [30, 30, 0, 25]),  # zero width: dropped
        (1, 3, [60, 60, 20, 20]),  # "sofa": unknown class
        (1, 2, [70, 70, 20, 20]),  # "window": dropped on purpose
        (6, 1, [5, 5, 30, 30]),
        (7, 1, [5, 5, 27, 27]),
    ]
    anns = [{"id": i, "image_id": im, "category_id": c, "bbox": b} for i, (im, c, b) in enumerate(boxes, 1)]
    cats = [{"id": 1, "name": "signboard"}, {"id": 2, "name": "window"}, {"id": 3, "name": "sofa"}]
    (data / "coco.json").write_text(json.dumps({"images": coco_images, "annotations": anns, "categories": cats}))
    definition = tmp_path / "defects.yaml"
    definition.write_text(yaml.safe_dump({
        "name": "defects", "path": "defects", "format": "coco", "licence": "test", "attribution": "test",
        "options": {"annotations": "coco.json"}, "classes": {"signboard": "shop_sign", "window": None},
    }))
    return load_source(str(definition), tmp_path / "data")


def test_validation_catches_each_defect(tmp_path, defective_source):
    out = tmp_path / "out"
    manifest = build(BuildOptions(sources=[defective_source], out=out, pseudo_labels=False), log=lambda _: None)
    report = json.loads((out / "report.json").read_text())

    assert [Path(p.split(": ")[1]).name for p in report["missing_images"]] == ["missing.jpg"]
    unreadable = sorted(Path(p.split(": ")[1]).name for p in report["unreadable_images"])
    assert unreadable == ["corrupt.jpg", "truncated.jpg"]
    assert report["boxes_clipped"] == {"defects": 1}
    assert report["boxes_dropped_outside"] == {"defects": 1}
    assert report["boxes_dropped_degenerate"] == {"defects": 1}
    assert report["unknown_classes"] == {"defects:sofa": 1}
    assert report["boxes_dropped_by_map"] == {"defects": 1}
    # The labelled twin is kept over its unlabelled copy, and the disagreement is reported.
    assert report["exact_duplicates"] == [
        {"kept": "defects/good.jpg", "dropped": ["defects/copy_of_good.jpg"], "labels_agree": False}
    ]
    assert report["near_duplicate_clusters"] == [["defects/base.jpg", "defects/near.jpg"]]

    files = {m.file.split("/", 1)[1]: m for m in manifest.images}
    assert set(files) == {"defects__good.jpg", "defects__base.jpg", "defects__near.jpg"}
    # The kept copy carries the two good boxes, the clipped one ending at the image edge.
    kept = files["defects__good.jpg"]
    labels = read_labels(out)[f"{kept.split}/defects__good"]
    shop_sign = list(gridwatch_classes()).index("shop_sign")
    assert [int(r[0]) for r in labels] == [shop_sign, shop_sign]
    right_edges = sorted(r[1] + r[3] / 2 for r in labels)
    assert right_edges[-1] == pytest.approx(1.0, abs=1e-5)
    assert files["defects__base.jpg"].split == files["defects__near.jpg"].split


def test_split_never_straddles_a_near_duplicate_cluster():
    # Stems whose own hashes fall on different sides, linked as near-duplicates.
    stems = [f"img_{i}" for i in range(400)]
    val = [s for s in stems if split_of(s, 0.15) == "val"]
    train = [s for s in stems if split_of(s, 0.15) == "train"]
    assert val and train
    rng = np.random.default_rng(0)
    images, phash = [], 0
    for k in range(60):
        phash = int(rng.integers(0, 2**63))
        members = [val[k % len(val)], train[k]] if k % 2 else [train[k], val[k % len(val)]]
        for j, stem in enumerate(members):
            near = phash ^ (1 << int(rng.integers(0, 64))) if j else phash  # one bit apart
            images.append(CheckedImage(source="s", image=Path(f"{stem}-{k}.jpg"), stem=stem, out_name="",
                                       size=(1, 1), boxes=np.zeros((0, 4)), classes=[], sha256=str(k * 2 + j),
                                       phash=near))
    report = Report()
    assign_splits(images, 0.15, 6, report)
    clusters: dict[int, set[str]] = {}
    for im in images:
        clusters.setdefault(im.cluster, set()).add(im.split)
    assert len(report.near_duplicate_clusters) == len(clusters)
    assert all(len(splits) == 1 for splits in clusters.values())
    for im in images:  # the cluster follows its smallest stem, as the lead's per-image rule did
        members = [i.stem for i in images if i.cluster == im.cluster]
        assert im.split == split_of(min(members), 0.15)


def test_split_groups_stay_whole_and_leave_one_for_val():
    # Review frames: camera + day groups. Two groups whose keys both hash to train, frames of one
    # group with unrelated looks, and a base image that is a near-duplicate of a review frame.
    keys = [k for k in (f"review:cam-{i}/20261123" for i in range(50)) if split_of(k, 0.15) == "train"][:2]

    def image(stem: str, phash: int) -> CheckedImage:
        return CheckedImage(source="s", image=Path(f"{stem}.jpg"), stem=stem, out_name="", size=(1, 1),
                            boxes=np.zeros((0, 4)), classes=[], sha256=stem, phash=phash)

    rng = np.random.default_rng(1)
    frames = [image(f"GW-{i}", int(rng.integers(0, 2**63))) for i in range(6)]
    base = image("base_twin", frames[0].phash ^ 1)
    groups = {f.image: keys[i % 2] for i, f in enumerate(frames)}
    assign_splits(frames + [base], 0.15, 6, Report(), groups)
    by_group = {key: {f.split for f in frames if groups[f.image] == key} for key in keys}
    assert all(len(splits) == 1 for splits in by_group.values())  # a group is never split
    assert {next(iter(s)) for s in by_group.values()} == {"train", "val"}  # none hashed to val: one moved there
    assert base.split == frames[0].split and base.cluster == frames[0].cluster  # near-duplicates stay together
    # All groups hashing to val: one crosses to train.
    val_keys = [k for k in (f"review:cam-{i}/20261124" for i in range(80)) if split_of(k, 0.15) == "val"][:2]
    groups = {f.image: val_keys[i % 2] for i, f in enumerate(frames)}
    assign_splits(frames, 0.15, 6, Report(), groups)
    assert {f.split for f in frames if groups[f.image] == val_keys[0]} != {f.split for f in frames if groups[f.image] == val_keys[1]}
    # Without groups the same frames split one by one, as before.
    assign_splits(frames, 0.15, 6, Report())
    assert [f.split for f in frames] == [split_of(f.stem, 0.15) for f in frames]


def test_split_rule_matches_the_first_training_run():
    # The first run used: val iff int(sha1(stem), 16) % 100 < 15.
    import hashlib

    for stem in [f"img_{i}" for i in range(300)] + ["train_picture_12", "000001_jpg.rf.44380ef00dc39c1ca99f861b0440fd98"]:
        expected = "val" if int(hashlib.sha1(stem.encode()).hexdigest(), 16) % 100 < 15 else "train"
        assert split_of(stem, 0.15) == expected


def test_small_real_build_loads_in_ultralytics(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(["dataset", "build", "--limit", "4", "--out", str(out), "--synthetic", "2",
               "--cache-dir", str(tmp_path / "cache"), "--threads", "1"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "class" in printed and "push_cart" in printed and "shop_sign" in printed

    data = yaml.safe_load((out / "data.yaml").read_text())
    assert Path(data["path"]).is_absolute()
    assert list(data["names"].values()) == list(gridwatch_classes())
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["dataset_hash"]) == 64 and data["dataset_hash"] == manifest["dataset_hash"]
    assert data["sources"] == ["facade_signs_spb", "garbage_overflow_cn", "thela_india"]
    assert sum(1 for m in manifest["images"] if m["synthetic"]) == 2
    assert {m["source"] for m in manifest["images"]} == {"garbage_overflow_cn", "facade_signs_spb", "thela_india", "synthetic"}
    pseudo = [m for m in manifest["images"] if m["pseudo_boxes"]]
    assert pseudo, "the teacher should find people or cars on 12 street images"
    context = set(gridwatch_classes()[8:])
    assert all(set(m["pseudo_labelled_classes"]) <= context for m in pseudo)

    from training.offline import prepare

    prepare()
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    checked = check_det_dataset(str(out / "data.yaml"))
    assert checked["nc"] == len(gridwatch_classes())
    for split in ("train", "val"):
        dataset = YOLODataset(img_path=checked[split], data=checked, augment=False, imgsz=320)
        n_images = len(list((out / "images" / split).iterdir()))
        assert len(dataset.labels) == n_images
        boxes = sum(len(l["cls"]) for l in dataset.labels)
        assert boxes == sum(len(f.read_text().splitlines()) for f in (out / "labels" / split).glob("*.txt"))

    # Rebuilding the same thing gives the same hash, from the teacher's cache.
    rc = main(["dataset", "build", "--limit", "4", "--out", str(out), "--synthetic", "2",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0 and "0 runs" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["dataset_hash"] == manifest["dataset_hash"]


def test_refuses_to_overwrite_a_folder_that_is_not_a_build(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    rc = main(["dataset", "build", "--limit", "1", "--no-pseudo-labels", "--out", str(tmp_path)])
    assert rc == 2 and "not overwriting" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    with pytest.raises(BuildError):
        build(BuildOptions(sources=[]), log=lambda _: None)


def test_a_failed_rebuild_leaves_the_previous_build_intact(tmp_path, monkeypatch):
    import training.data.dataset_build as dataset_build

    source = load_source("thela_india", DATASETS)
    out = tmp_path / "ds"
    options = BuildOptions(sources=[source], out=out, pseudo_labels=False, limit=2)
    first = build(options, log=lambda _: None)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(dataset_build, "write_image", disk_full)
    with pytest.raises(OSError):
        build(options, log=lambda _: None)
    assert json.loads((out / "manifest.json").read_text())["dataset_hash"] == first.dataset_hash
    assert len(list((out / "images").rglob("*.jpg"))) == 2

    monkeypatch.undo()
    assert build(options, log=lambda _: None).dataset_hash == first.dataset_hash
