"""`gridwatch dataset pack` on a small real build: smaller images, the same labels, a manifest
that sampling still reads, and a folder Ultralytics trains from wherever it is copied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from serving.cli import main
from training.data.dataset_manifest import DatasetManifest
from training.fit.sampling import train_images
from training.data.yolo_format import find_images, read_data_yaml


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build") / "ds"
    rc = main(["dataset", "build", "--limit", "3", "--no-pseudo-labels", "--synthetic", "1", "--crops", "416",
               "--out", str(out)])
    assert rc == 0
    return out


def _merged(pack: Path, into: Path) -> Path:
    """Every part copied into one folder, as the pack's help says."""
    shutil.copytree(pack / "part-1", into)
    for part in sorted(pack.glob("part-*"))[1:]:
        shutil.copytree(part / "images", into / "images", dirs_exist_ok=True)
    return into


def _sampling_view(dataset: Path, split: str = "train") -> dict[str, tuple[str, frozenset[str]]]:
    data = read_data_yaml(dataset / "data.yaml")
    images = find_images(dataset / "images" / split)
    labels = [[int(line.split()[0]) for line in (dataset / "labels" / split / f"{p.stem}.txt").read_text().splitlines()]
              if (dataset / "labels" / split / f"{p.stem}.txt").is_file() else [] for p in images]
    seen = train_images([str(p) for p in images], labels, data.names, dataset / "manifest.json")
    return {p.stem: (s.source, s.human_classes) for p, s in zip(images, seen)}


def test_pack_shrinks_images_and_keeps_labels_manifest_and_sampling(build, tmp_path, capsys):
    rc = main(["dataset", "pack", "--data", str(build / "data.yaml"), "--out", str(tmp_path / "pack"),
               "--imgsz", "320", "--parts", "2"])
    assert rc == 0, capsys.readouterr().err
    assert "part-2" in capsys.readouterr().out
    pack = tmp_path / "pack"
    assert not (pack / "part-2" / "images" / "val").exists() and not (pack / "part-2" / "manifest.json").exists()
    # every source with two images or more is in both parts: part 1 alone is a fair share
    sources = lambda part: {p.name.split("__")[0] for p in (pack / part / "images" / "train").iterdir()}  # noqa: E731
    assert sources("part-1") >= sources("part-2") >= {"facade_signs_spb", "garbage_overflow_cn", "thela_india"}

    whole = _merged(pack, tmp_path / "whole")
    for split in ("train", "val"):
        originals = {p.stem: p for p in find_images(build / "images" / split)}
        packed = {p.stem: p for p in find_images(whole / "images" / split)}
        assert packed.keys() == originals.keys()
        shrunk = 0
        for stem, path in packed.items():
            with Image.open(path) as im, Image.open(originals[stem]) as original:
                assert im.format == "WEBP" and max(im.size) <= 320
                assert abs(im.size[0] / im.size[1] - original.size[0] / original.size[1]) < 0.02
                shrunk += max(original.size) > 320
            label = build / "labels" / split / f"{stem}.txt"
            if label.is_file():
                assert (whole / "labels" / split / f"{stem}.txt").read_text() == label.read_text()
        assert shrunk, "the build has images larger than 320 px"

    manifest = DatasetManifest.model_validate_json((whole / "manifest.json").read_text())
    assert all((whole / "images" / m.file).is_file() for m in manifest.images)
    crops = [m for m in manifest.images if getattr(m, "crop_of", None)]
    assert crops and all((whole / "images" / m.crop_of).is_file() for m in crops)
    assert manifest.dataset_hash == json.loads((build / "manifest.json").read_text())["dataset_hash"]
    # repeat-factor sampling sees each packed image as the same source with the same human classes
    assert _sampling_view(whole) == _sampling_view(build)
    assert {source for source, _ in _sampling_view(whole).values()} >= {"thela_india", "synthetic"}


def test_part_one_trains_wherever_it_is_copied(build, tmp_path):
    assert main(["dataset", "pack", "--data", str(build / "data.yaml"), "--out", str(tmp_path / "pack")]) == 0
    moved = shutil.move(str(tmp_path / "pack" / "part-1"), str(tmp_path / "elsewhere"))

    from training.offline import prepare

    prepare()
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    checked = check_det_dataset(str(Path(moved) / "data.yaml"))
    assert Path(checked["train"]).is_relative_to(tmp_path / "elsewhere")
    for split in ("train", "val"):
        dataset = YOLODataset(img_path=checked[split], data=checked, augment=False, imgsz=320)
        assert len(dataset.labels) == len(list((build / "images" / split).iterdir()))
        boxes = sum(len(label["cls"]) for label in dataset.labels)
        assert boxes == sum(len(f.read_text().splitlines()) for f in (build / "labels" / split).glob("*.txt"))


def test_refusals_leave_nothing_behind(build, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(build, broken)
    yaml_text = (broken / "data.yaml").read_text().replace(str(build), str(broken))
    (broken / "data.yaml").write_text(yaml_text)
    victim = sorted((broken / "images" / "train").iterdir())[0]
    victim.write_bytes(b"not an image")
    out = tmp_path / "pack"
    assert main(["dataset", "pack", "--data", str(broken / "data.yaml"), "--out", str(out)]) == 2
    assert victim.name in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["broken"]

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["dataset", "pack", "--data", str(build / "data.yaml"), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["dataset", "pack", "--data", str(build / "data.yaml"), "--out", str(tmp_path / "x"),
                 "--quality", "0"]) == 2
    assert "quality" in capsys.readouterr().err
