"""The YOLO dataset format: data.yaml, label files, image folders and where a label lives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data.yolo_format import (
    DataYaml,
    YoloFormatError,
    boxes_to_pixels,
    find_images,
    label_path,
    label_text,
    read_data_yaml,
    read_labels,
    write_data_yaml,
)


def test_data_yaml_reads_what_ultralytics_and_the_build_write(tmp_path):
    (tmp_path / "data.yaml").write_text("path: ds\ntrain: images/train\nval: images/val\nnames: [bin, cart]\n"
                                        "sources: {garbage_overflow_cn: 1}\n")
    data = read_data_yaml(tmp_path / "data.yaml")
    assert data.names == {0: "bin", 1: "cart"} and data.root == tmp_path / "ds"
    assert data.split_dir("val") == tmp_path / "ds" / "images" / "val" and data.split_dir("test") is None
    assert data.sources == ["garbage_overflow_cn"] and data.dataset_hash is None

    written = DataYaml(file=tmp_path / "again.yaml", root=tmp_path, names={0: "bin"},
                       splits={"train": "images/train", "val": "images/val"}, sources=["a"], dataset_hash="f00")
    write_data_yaml(written)
    assert read_data_yaml(written.file) == written
    assert written.file.read_text().splitlines()[:3] == [f"path: {tmp_path}", "train: images/train", "val: images/val"]


@pytest.mark.parametrize("content, problem", [
    ("names: {}\n", "'names'"), ("train: images\n", "'names'"), ("names: [a\n", "not valid YAML"),
    ("- a\n", "expected a mapping"),
])
def test_bad_data_yaml_names_the_file(tmp_path, content, problem):
    (tmp_path / "data.yaml").write_text(content)
    with pytest.raises(YoloFormatError, match=problem) as error:
        read_data_yaml(tmp_path / "data.yaml")
    assert str(tmp_path / "data.yaml") in str(error.value)
    with pytest.raises(YoloFormatError, match="cannot read"):
        read_data_yaml(tmp_path / "missing.yaml")


def test_label_path_follows_ultralytics(tmp_path):
    images = tmp_path / "images" / "val"
    assert label_path(images / "sub" / "a.jpg", images) == tmp_path / "labels" / "val" / "sub" / "a.txt"
    assert label_path(tmp_path / "frames" / "a.png", tmp_path / "frames") == tmp_path / "frames" / "a.txt"
    custom = label_path(tmp_path / "pics" / "a.jpg", tmp_path / "pics", tmp_path / "boxes")
    assert custom == tmp_path / "boxes" / "a.txt"


def test_find_images_by_suffix_at_any_depth(tmp_path):
    for name in ("b.JPG", "a.png", "deep/c.webp", "notes.txt", "clip.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == ["a.png", "b.JPG", "deep/c.webp"]


def test_label_lines_keep_what_each_reader_needs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("0 0.5 0.5 0.2 0.4\n\n1 0.1 0.2\nx 0.1 0.2 0.3 0.4\n2 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\n")
    box, short, word, polygon = read_labels(path)
    assert (box.number, box.class_id, box.box, box.is_box) == (1, 0, (0.5, 0.5, 0.2, 0.4), True)
    assert (short.number, short.box, short.is_box) == (3, None, False)
    assert (word.class_id, word.box, word.text) == (None, None, "x 0.1 0.2 0.3 0.4")
    # A polygon's first four numbers parse, but the line is not a box.
    assert polygon.box == (0.1, 0.1, 0.3, 0.1) and not polygon.is_box
    assert read_labels(tmp_path / "none.txt") == []  # an image with no objects


def test_pixels_and_label_text_round_trip():
    size = (200, 100)
    pixels = boxes_to_pixels([(0.5, 0.5, 0.2, 0.4)], size)
    np.testing.assert_allclose(pixels, [[80, 30, 120, 70]])
    assert label_text(pixels, [3], size) == "3 0.500000 0.500000 0.200000 0.400000\n"
    assert boxes_to_pixels([], size).shape == (0, 4)


def test_a_label_file_written_reads_back(tmp_path):
    boxes = np.array([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 640.0, 480.0]])
    path = Path(tmp_path / "a.txt")
    path.write_text(label_text(boxes, [1, 0], (640, 480)))
    lines = read_labels(path)
    assert [line.class_id for line in lines] == [1, 0] and all(line.is_box for line in lines)
    np.testing.assert_allclose(boxes_to_pixels([line.box for line in lines], (640, 480)), boxes, atol=1e-3)
