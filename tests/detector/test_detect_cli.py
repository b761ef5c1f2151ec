"""`gridwatch detect` on real images, a real video, and files that must fail cleanly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from tests.support.shared_data import COCO_INT8, real_images


def gridwatch(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", *args], capture_output=True, text=True, timeout=300
    )


def write_video(path: Path, image: np.ndarray, seconds: int, fps: int = 5) -> None:
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for _ in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:h, :w]), format="bgr24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    street = real_images("thela_india", 2)
    for p in street:
        shutil.copy(p, folder / p.name)
    (folder / "notes.jpg").write_text("this is not an image")
    data = street[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 20])
    write_video(folder / "clip.mp4", cv2.imread(str(street[0])), seconds=5)
    return folder


def test_detect_folder_with_video_and_bad_files(inputs: Path, tmp_path: Path):
    save = tmp_path / "annotated"
    result = gridwatch("detect", str(inputs), "--model", str(COCO_INT8), "--save", str(save), "--every", "2")
    assert result.returncode == 1  # something failed, but the run went on
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    sources = [Path(r["source"]).name for r in lines]
    assert sources.count("clip.mp4") == 3  # 5 s of video sampled every 2 s: t = 0, 2, 4
    assert [r["time_s"] for r in lines if r["source"].endswith("clip.mp4")] == [0.0, 2.0, 4.0]
    assert sum(1 for s in sources if s.startswith("train_picture")) == 2
    assert any(r["detections"] for r in lines)
    for record in lines:
        for d in record["detections"]:
            assert set(d) == {"class_id", "class_name", "score", "box"}
            assert 0 <= d["score"] <= 1 and len(d["box"]) == 4
        assert Path(record["saved"]).is_file()
    errors = result.stderr.strip().splitlines()
    assert any("notes.jpg" in e for e in errors) and any("truncated.jpg" in e for e in errors)
    assert len(errors) == 2


def test_annotated_image_differs_from_original_only_where_boxes_are(inputs: Path, tmp_path: Path):
    image = sorted(inputs.glob("train_picture*"))[0]
    save = tmp_path / "out"
    result = gridwatch("detect", str(image), "--model", str(COCO_INT8), "--save", str(save))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    annotated = cv2.imread(record["saved"]).astype(int)
    original = cv2.imread(str(image)).astype(int)
    assert annotated.shape == original.shape
    assert np.abs(annotated - original).max() > 100  # boxes were drawn
    x1, y1, x2, y2 = (int(v) for v in record["detections"][0]["box"])
    assert np.abs(annotated - original)[y1:y2, x1:x2].sum() > 0


def test_missing_source_and_no_model(tmp_path: Path):
    result = gridwatch("detect", str(tmp_path / "nope.jpg"), "--model", str(COCO_INT8))
    assert result.returncode == 1 and "no such file" in result.stderr
    result = gridwatch("detect", str(tmp_path), "--model", str(tmp_path / "missing.onnx"))
    assert result.returncode == 2 and "model file not found" in result.stderr


def test_annotated_copies_never_replace_the_originals_or_each_other(inputs: Path, tmp_path: Path):
    image = sorted(inputs.glob("train_picture*"))[0]
    before = image.read_bytes()
    result = gridwatch("detect", str(image), "--model", str(COCO_INT8), "--save", str(inputs))
    assert result.returncode == 2 and "a folder the images are read from" in result.stderr
    assert image.read_bytes() == before
    # Two sources of one name, from two folders: each keeps its own annotated copy.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(sorted(inputs.glob("train_picture*"))[1], other / image.name)
    save = tmp_path / "out"
    result = gridwatch("detect", str(image), str(other / image.name), "--model", str(COCO_INT8), "--save", str(save))
    assert result.returncode == 0, result.stderr
    saved = [json.loads(line)["saved"] for line in result.stdout.splitlines()]
    assert len(set(saved)) == 2 and all(Path(s).is_file() for s in saved)
