"""Every annotation format reads the same boxes for the same images.

Real images from ../shared; the annotation files are written here, in tmp dirs, in each
format's own conventions (COCO xywh pixels, VOC/CVAT corners, Label Studio percent).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from tests.support.shared_data import DATASETS
from training.data.importers import AnnotationError, read_coco, read_cvat, read_label_studio, read_voc, read_yolo
from training.data.sources import load_source

pytestmark = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"no shared datasets at {DATASETS}")


@pytest.fixture(scope="module")
def truth():
    """(image, (w, h), boxes in pixels, source labels) for real images of two sources, sizes differ."""
    picked = []
    for name, n in (("facade_signs_spb", 2), ("thela_india", 2)):
        samples = [s for s in load_source(name, DATASETS).read() if len(s.labels)]
        picked += samples[:n]
    assert len({s.size for s in picked}) > 1, "want images of different sizes"
    return picked


def write_yolo(root: Path, samples, names: list[str]) -> None:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "data.yaml").write_text(json.dumps({"names": names}))
    for s in samples:
        (root / "images" / s.image.name).symlink_to(s.image)
        w, h = s.size
        lines = [
            f"{names.index(l)} {(b[0] + b[2]) / 2 / w} {(b[1] + b[3]) / 2 / h} {(b[2] - b[0]) / w} {(b[3] - b[1]) / h}"
            for b, l in zip(s.boxes, s.labels)
        ]
        (root / "labels" / f"{s.image.stem}.txt").write_text("\n".join(lines) + "\n")


def write_coco(path: Path, samples, names: list[str]) -> None:
    images, annotations = [], []
    for i, s in enumerate(samples, 1):
        images.append({"id": i, "file_name": s.image.name, "width": s.size[0], "height": s.size[1]})
        for b, l in zip(s.boxes, s.labels):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": names.index(l) + 1, "iscrowd": 0,
                 "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": float((b[2] - b[0]) * (b[3] - b[1]))}
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def write_voc(folder: Path, samples) -> None:
    folder.mkdir()
    for s in samples:
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = s.image.name
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = str(s.size[0])
        ET.SubElement(size, "height").text = str(s.size[1])
        ET.SubElement(size, "depth").text = "3"
        for b, l in zip(s.boxes, s.labels):
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = l
            box = ET.SubElement(obj, "bndbox")
            for k, v in zip(("xmin", "ymin", "xmax", "ymax"), b):
                ET.SubElement(box, k).text = repr(float(v))
        ET.ElementTree(root).write(folder / f"{s.image.stem}.xml")


def write_label_studio(path: Path, samples) -> None:
    tasks = []
    for i, s in enumerate(samples, 1):
        w, h = s.size
        result = [
            {"id": f"r{j}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
             "original_width": w, "original_height": h, "image_rotation": 0,
             "value": {"x": b[0] / w * 100, "y": b[1] / h * 100, "width": (b[2] - b[0]) / w * 100,
                       "height": (b[3] - b[1]) / h * 100, "rotation": 0, "rectanglelabels": [l]}}
            for j, (b, l) in enumerate(zip(s.boxes, s.labels))
        ]
        # Label Studio prefixes uploaded files with 8 hex digits and a dash.
        tasks.append({"id": i, "data": {"image": f"/data/upload/1/{i:08x}-{s.image.name}"},
                      "annotations": [{"id": i, "was_cancelled": False, "result": result}], "predictions": []})
    path.write_text(json.dumps(tasks))


def write_cvat(path: Path, samples) -> None:
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    for i, s in enumerate(samples):
        image = ET.SubElement(root, "image", id=str(i), name=s.image.name, width=str(s.size[0]), height=str(s.size[1]))
        for b, l in zip(s.boxes, s.labels):
            ET.SubElement(image, "box", label=l, occluded="0", source="manual", z_order="0",
                          xtl=f"{b[0]:.4f}", ytl=f"{b[1]:.4f}", xbr=f"{b[2]:.4f}", ybr=f"{b[3]:.4f}")
    ET.ElementTree(root).write(path, encoding="utf-8")


def by_image(samples):
    return {s.image.name: s for s in samples}


def test_all_formats_read_identical_boxes(tmp_path, truth):
    names = sorted({l for s in truth for l in s.labels})
    images = tmp_path / "images"
    images.mkdir()
    for s in truth:
        (images / s.image.name).symlink_to(s.image)
    write_yolo(tmp_path / "yolo", truth, names)
    write_coco(tmp_path / "coco.json", truth, names)
    write_voc(tmp_path / "voc", truth)
    write_label_studio(tmp_path / "ls.json", truth)
    write_cvat(tmp_path / "cvat.xml", truth)

    read = {
        "yolo": read_yolo(tmp_path / "yolo"),
        "coco": read_coco(tmp_path / "coco.json", images),
        "voc": read_voc(tmp_path / "voc", images),
        "labelstudio": read_label_studio(tmp_path / "ls.json", images),
        "cvat": read_cvat(tmp_path / "cvat.xml", images),
    }
    expected = by_image(truth)
    for fmt, samples in read.items():
        got = by_image(samples)
        assert set(got) == set(expected), fmt
        for name, s in got.items():
            assert s.image.is_file(), f"{fmt}: {s.image} does not resolve"
            assert s.size == expected[name].size, fmt
            assert s.labels == expected[name].labels, fmt
            np.testing.assert_allclose(s.boxes, expected[name].boxes, atol=1e-3, err_msg=f"{fmt} {name}")
            assert not s.problems, (fmt, s.problems)


def test_voc_devkit_one_based_corners(tmp_path, truth):
    s = truth[0]
    write_voc(tmp_path / "voc", [s])
    boxes = read_voc(tmp_path / "voc", s.image.parent, one_based=True)[0].boxes
    np.testing.assert_allclose(boxes[:, :2], s.boxes[:, :2] - 1)
    np.testing.assert_allclose(boxes[:, 2:], s.boxes[:, 2:])


def test_odd_content_is_reported_not_skipped(tmp_path, truth):
    s = truth[0]
    root = tmp_path / "yolo"
    write_yolo(root, [s], sorted(set(s.labels)))
    label = root / "labels" / f"{s.image.stem}.txt"
    label.write_text(label.read_text() + "0 0.5 0.5\n7 0.5 0.5 0.1 0.1\n")
    sample = read_yolo(root)[0]
    assert any("malformed" in p for p in sample.problems)
    assert "<class id 7>" in sample.labels  # an id beyond names: an unknown class, not dropped

    cvat = tmp_path / "cvat.xml"
    cvat.write_text(
        '<annotations><version>1.1</version><image id="0" name="x.jpg" width="10" height="10">'
        '<polygon label="a" points="1,1;5,1;5,5"/><box label="a" xtl="1" ytl="2" xbr="3" ybr="4"/></image></annotations>'
    )
    sample = read_cvat(cvat, tmp_path)[0]
    assert sample.labels == ["a"] and any("polygon" in p for p in sample.problems)


def test_unreadable_annotation_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match="bad.json"):
        read_coco(bad, tmp_path)
    bad.write_text(json.dumps({"tasks": []}))
    with pytest.raises(AnnotationError, match="list of tasks"):
        read_label_studio(bad, tmp_path)
    xml = tmp_path / "bad.xml"
    xml.write_text("<annotations><image")
    with pytest.raises(AnnotationError, match="bad.xml"):
        read_cvat(xml, tmp_path)
