"""`gridwatch dataset import`: each labelling tool's export, as the tool lays it out (folder and
zip), becomes a source definition that `gridwatch dataset build` reads from any folder.

The exports are written here at test time around a few real images of ../shared (copied into
tmp: a zip cannot hold links), in each tool's documented layout and coordinate conventions.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from serving.cli import main
from tests.support.shared_data import DATASETS
from training.data.dataset_build import BuildError, BuildOptions, build
from training.data.dataset_import import suggest
from training.data.sources import gridwatch_classes, load_source

pytestmark = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"no shared datasets at {DATASETS}")

# garbage_overflow_cn's own names, as a bureau's project might call them
RENAME = {"overflow": "满溢", "garbage": "garbage", "garbage_bin": "garbage_bin"}
MAPS = ["--map", "满溢=bin_overflow", "--map", "garbage=garbage_pile"]
TARGET = {"满溢": "bin_overflow", "garbage": "garbage_pile", "garbage_bin": "garbage_bin"}


@pytest.fixture(scope="module")
def truth():
    """A few labelled real images with boxes of all three classes: (image, (w, h), boxes, labels)."""
    samples = [s for s in load_source("garbage_overflow_cn", DATASETS).read() if len(s.labels)]
    picked, seen = [], set()
    for s in samples:
        new = set(s.labels) - seen
        if new or len(picked) < 2:
            picked.append(s)
            seen |= set(s.labels)
        if len(picked) >= 4 and seen >= set(RENAME):
            break
    assert seen >= set(RENAME)
    for s in picked:
        s.labels = [RENAME[l] for l in s.labels]
    return picked


def _copy(s, folder: Path, name: str | None = None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(s.image, folder / (name or s.image.name))
    return name or s.image.name


def _names(samples) -> list[str]:
    return sorted({l for s in samples for l in s.labels})


def cvat_images(root: Path, samples) -> Path:
    """CVAT for images 1.1: annotations.xml + images/."""
    top = ET.Element("annotations")
    ET.SubElement(top, "version").text = "1.1"
    for i, s in enumerate(samples):
        name = _copy(s, root / "images")
        image = ET.SubElement(top, "image", id=str(i), name=name, width=str(s.size[0]), height=str(s.size[1]))
        for b, l in zip(s.boxes, s.labels):
            ET.SubElement(image, "box", label=l, source="manual", occluded="0", z_order="0",
                          xtl=f"{b[0]:.2f}", ytl=f"{b[1]:.2f}", xbr=f"{b[2]:.2f}", ybr=f"{b[3]:.2f}")
    ET.ElementTree(top).write(root / "annotations.xml", encoding="utf-8", xml_declaration=True)
    return root


def coco_json(samples, names: list[str], file_name, first_id: int = 1) -> dict:
    images, annotations = [], []
    for i, s in enumerate(samples, 1):
        images.append({"id": i, "file_name": file_name(s), "width": s.size[0], "height": s.size[1]})
        for b, l in zip(s.boxes, s.labels):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": names.index(l) + first_id,
                                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                                "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0, "segmentation": []})
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": i + first_id, "name": n, "supercategory": ""} for i, n in enumerate(names)]}


def cvat_coco(root: Path, samples) -> Path:
    """CVAT COCO 1.0: annotations/instances_default.json, images/default/<file>."""
    for s in samples:
        _copy(s, root / "images" / "default")
    (root / "annotations").mkdir(parents=True)
    data = coco_json(samples, _names(samples), lambda s: s.image.name)
    (root / "annotations" / "instances_default.json").write_text(json.dumps(data, ensure_ascii=False))
    return root


def cvat_voc(root: Path, samples) -> Path:
    """CVAT Pascal VOC 1.1: Annotations/, ImageSets/Main/default.txt, JPEGImages/, labelmap.txt."""
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for s in samples:
        name = _copy(s, root / "JPEGImages")
        top = ET.Element("annotation")
        ET.SubElement(top, "folder").text = ""
        ET.SubElement(top, "filename").text = name
        size = ET.SubElement(top, "size")
        for k, v in (("width", s.size[0]), ("height", s.size[1]), ("depth", 3)):
            ET.SubElement(size, k).text = str(v)
        for b, l in zip(s.boxes, s.labels):
            obj = ET.SubElement(top, "object")
            ET.SubElement(obj, "name").text = l
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = "0"
            box = ET.SubElement(obj, "bndbox")
            for k, v in zip(("xmin", "ymin", "xmax", "ymax"), b):
                ET.SubElement(box, k).text = f"{v:.2f}"
        ET.ElementTree(top).write(root / "Annotations" / f"{s.image.stem}.xml", encoding="utf-8")
    (root / "ImageSets" / "Main" / "default.txt").write_text("".join(f"{s.image.stem}\n" for s in samples))
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
        f"{n}:0,0,0::\n" for n in ["background", *_names(samples)]), encoding="utf-8")
    return root


def _yolo_lines(s, names: list[str]) -> str:
    w, h = s.size
    return "".join(f"{names.index(l)} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
                   f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}\n" for b, l in zip(s.boxes, s.labels))


def cvat_ultralytics(root: Path, samples) -> Path:
    """CVAT Ultralytics YOLO Detection 1.0: data.yaml, train.txt, images/train/, labels/train/."""
    names = _names(samples)
    (root / "labels" / "train").mkdir(parents=True)
    listed = []
    for s in samples:
        name = _copy(s, root / "images" / "train")
        (root / "labels" / "train" / f"{Path(name).stem}.txt").write_text(_yolo_lines(s, names))
        listed.append(f"images/train/{name}\n")
    (root / "train.txt").write_text("".join(listed))
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "train.txt",
                                                    "names": dict(enumerate(names))}, allow_unicode=True))
    return root


def _uploaded(i: int, s) -> str:
    return f"{i:08x}-{s.image.name}"  # Label Studio prefixes an upload with 8 hex digits


def label_studio_json(root: Path, samples) -> Path:
    """Label Studio's JSON export: one task list; the images stay in Label Studio's upload folder."""
    tasks = []
    for i, s in enumerate(samples, 1):
        _copy(s, root / "media" / "upload" / "1", _uploaded(i, s))
        w, h = s.size
        result = [{"id": f"r{j}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
                   "original_width": w, "original_height": h, "image_rotation": 0,
                   "value": {"x": b[0] / w * 100, "y": b[1] / h * 100, "width": (b[2] - b[0]) / w * 100,
                             "height": (b[3] - b[1]) / h * 100, "rotation": 0, "rectanglelabels": [l]}}
                  for j, (b, l) in enumerate(zip(s.boxes, s.labels))]
        tasks.append({"id": i, "data": {"image": f"/data/upload/1/{_uploaded(i, s)}"},
                      "annotations": [{"id": i, "was_cancelled": False, "result": result}], "predictions": []})
    export = root / "export" / "project-1-at-2026-12-05-10-00-3f2a1b.json"
    export.parent.mkdir(parents=True)
    export.write_text(json.dumps(tasks, ensure_ascii=False))
    return root


def label_studio_coco(root: Path, samples) -> Path:
    """Label Studio's "COCO with images": result.json whose file_name is images/<hash>-<name>.jpg."""
    names = _names(samples)
    for i, s in enumerate(samples, 1):
        _copy(s, root / "images", _uploaded(i, s))
    order = {id(s): i for i, s in enumerate(samples, 1)}
    data = coco_json(samples, names, lambda s: f"images/{_uploaded(order[id(s)], s)}", first_id=0)
    (root / "result.json").write_text(json.dumps(data, ensure_ascii=False))
    return root


def label_studio_yolo(root: Path, samples) -> Path:
    """Label Studio's "YOLO" export: classes.txt, images/, labels/, notes.json; no data.yaml."""
    names = _names(samples)
    (root / "labels").mkdir(parents=True)
    for i, s in enumerate(samples, 1):
        name = _copy(s, root / "images", _uploaded(i, s))
        (root / "labels" / f"{Path(name).stem}.txt").write_text(_yolo_lines(s, names))
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    (root / "notes.json").write_text(json.dumps({"categories": [{"id": i, "name": n} for i, n in enumerate(names)],
                                                 "info": {"year": 2026, "version": "1.0",
                                                          "contributor": "Label Studio"}}, ensure_ascii=False))
    return root


LAYOUTS = {
    "cvat_images": (cvat_images, "CVAT for images 1.1", "cvat"),
    "cvat_coco": (cvat_coco, "CVAT COCO 1.0", "coco"),
    "cvat_voc": (cvat_voc, "Pascal VOC", "voc"),
    "cvat_ultralytics": (cvat_ultralytics, "Ultralytics YOLO", "yolo"),
    "label_studio_json": (label_studio_json, "Label Studio JSON", "labelstudio"),
    "label_studio_coco": (label_studio_coco, "Label Studio COCO", "coco"),
    "label_studio_yolo": (label_studio_yolo, "Label Studio YOLO", "yolo"),
}


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive


def export_of(kind: str, root: Path, samples, zipped: bool) -> tuple[Path, list[str]]:
    """(what to pass to import, extra flags) for one layout."""
    write, _, _ = LAYOUTS[kind]
    folder = write(root / kind, samples)
    extra = []
    if kind == "label_studio_json":  # the JSON file, the images from Label Studio's upload folder
        extra = ["--images", str(folder / "media" / "upload" / "1")]
        target = next((folder / "export").glob("*.json"))
        return target, extra
    if zipped:
        archive = zip_folder(folder, root / f"{kind}.zip")
        shutil.rmtree(folder)
        return archive, extra
    return folder, extra


@pytest.mark.parametrize("zipped", [False, True], ids=["folder", "zip"])
@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_each_tool_export_imports_and_builds_from_any_folder(tmp_path, truth, kind, zipped, capsys, monkeypatch):
    if kind == "label_studio_json" and zipped:
        pytest.skip("Label Studio's JSON export is one .json file, never a zip")
    export, extra = export_of(kind, tmp_path / "exports", truth, zipped)
    definition = tmp_path / "defs" / "bureau.yaml"
    assert main(["dataset", "import", str(export), "--name", "bureau", "--out", str(definition),
                 *MAPS, "--licence", "proprietary", "--attribution", "Qingdao bureau", *extra]) == 0
    out = capsys.readouterr().out
    _, tool, fmt = LAYOUTS[kind]
    assert tool in out
    boxes = Counter(l for s in truth for l in s.labels)
    for label, target in TARGET.items():  # each class with its box count and what becomes of it
        line = next(l for l in out.splitlines() if l.startswith(label + " "))
        assert f" {boxes[label]} " in line and f"mapped -> {target}" in line
    spec = yaml.safe_load(definition.read_text(encoding="utf-8"))
    assert spec["format"] == fmt and Path(spec["path"]).is_absolute()
    assert spec["classes"] == TARGET and spec["licence"] == "proprietary"

    # built from another working folder, by the definition's path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    manifest = build(BuildOptions(sources=[load_source(str(definition))], out=tmp_path / "built",
                                  pseudo_labels=False, val_fraction=0.0), log=lambda _: None)
    assert manifest.counts.images["train"].real == len(truth)
    expected = Counter(TARGET[l] for s in truth for l in s.labels)
    assert manifest.counts.human["train"] == dict(expected)
    assert [s.name for s in manifest.sources] == ["bureau"]
    # the boxes are the ones drawn, whatever the tool's coordinates
    classes = list(gridwatch_classes())
    for s in truth:
        rows = np.loadtxt(tmp_path / "built" / "labels" / "train" / f"bureau__{export_name(kind, s, truth)}.txt",
                          ndmin=2)
        w, h = s.size
        got = sorted((classes[int(r[0])], round((r[1] - r[3] / 2) * w), round((r[2] - r[4] / 2) * h)) for r in rows)
        want = sorted((TARGET[l], round(b[0]), round(b[1])) for b, l in zip(s.boxes, s.labels))
        assert len(got) == len(want)
        for (gc, gx, gy), (wc, wx, wy) in zip(got, want):
            assert gc == wc and abs(gx - wx) <= 1 and abs(gy - wy) <= 1


def export_name(kind: str, s, truth) -> str:
    """The stem the built file takes: Label Studio renames uploads."""
    if kind.startswith("label_studio"):
        return Path(_uploaded(truth.index(s) + 1, s)).stem
    return s.image.stem


def test_unmapped_classes_are_reported_with_suggestions(tmp_path, truth, capsys):
    export = cvat_images(tmp_path / "export", truth)
    definition = tmp_path / "bureau.yaml"
    assert main(["dataset", "import", str(export), "--name", "bureau", "--out", str(definition)]) == 0
    out = capsys.readouterr().out
    assert "garbage_bin" in out and "mapped -> garbage_bin (same name)" in out
    line = next(l for l in out.splitlines() if l.startswith("满溢 "))
    assert "unknown" in line and "--map 满溢=bin_overflow" in line
    assert "--map garbage=garbage_pile" in out
    spec = yaml.safe_load(definition.read_text(encoding="utf-8"))
    assert spec["classes"] == {"garbage_bin": "garbage_bin"}  # suggestions are not guesses written down
    assert "满溢" in definition.read_text(encoding="utf-8")  # listed as a comment to edit

    # --map SRC= drops on purpose
    assert main(["dataset", "import", str(export), "--name", "bureau", "--out", str(definition),
                 "--map", "满溢=", "--map", "garbage=garbage_pile"]) == 0
    spec = yaml.safe_load(definition.read_text(encoding="utf-8"))
    assert spec["classes"]["满溢"] is None and "dropped" in capsys.readouterr().out


def test_suggestions_know_chinese_and_gridwatch_names():
    assert suggest("满溢") == "bin_overflow"
    assert suggest("垃圾站（箱）满溢") == "bin_overflow"
    assert suggest("垃圾桶满溢") == "bin_overflow"
    assert suggest("非法小广告") == "flyer"
    assert suggest("Shop-Sign") == "shop_sign"
    assert suggest("dining_table") == "dining table"
    assert suggest("tree") is None


def test_bad_imports_fail_with_one_clear_line(tmp_path, truth, capsys):
    export = cvat_images(tmp_path / "export", truth)
    out = tmp_path / "d.yaml"
    cases = [
        (["dataset", "import", str(tmp_path / "nope"), "--name", "x", "--out", str(out)], "no such file"),
        (["dataset", "import", str(export), "--name", "x", "--out", str(out), "--map", "满溢=overflowing"],
         "not a gridwatch class"),
        (["dataset", "import", str(export), "--name", "x", "--out", str(out), "--map", "sofa=chair"],
         "does not have: sofa"),
        (["dataset", "import", str(export), "--name", "garbage_overflow_cn", "--out", str(out)], "built-in source"),
        (["dataset", "import", str(export), "--name", "x", "--out", str(out), "--format", "coco"],
         "no labelling-tool export found in coco format"),
        (["dataset", "import", str(tmp_path), "--name", "x", "--out", str(out), "--map", "garbage_bin="],
         "no class is mapped"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    # a Label Studio JSON whose images are not where it says
    ls = label_studio_json(tmp_path / "ls", truth)
    assert main(["dataset", "import", str(next((ls / "export").glob("*.json"))), "--name", "x", "--out", str(out)]) == 2
    assert "--images" in capsys.readouterr().err
    # someone else's yaml is never overwritten
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\n")
    assert main(["dataset", "import", str(export), "--name", "x", "--out", str(mine)]) == 2
    assert mine.read_text() == "name: mine\n"


def test_unsafe_zip_is_refused(tmp_path, capsys):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.txt", "x")
    assert main(["dataset", "import", str(archive), "--name", "x", "--out", str(tmp_path / "d.yaml")]) == 2
    assert "unsafe member" in capsys.readouterr().err
    assert not (tmp_path.parent / "outside.txt").exists()


def test_an_empty_build_is_an_error(tmp_path, truth):
    """Every image of a source missing (a wrong images folder) fails the build instead of writing nothing."""
    root = label_studio_coco(tmp_path / "ls", truth)
    shutil.rmtree(root / "images")
    definition = tmp_path / "ls.yaml"
    definition.write_text(yaml.safe_dump({"name": "ls", "path": str(root), "format": "coco", "licence": "x",
                                          "attribution": "x", "options": {"annotations": "result.json"},
                                          "classes": TARGET}, allow_unicode=True), encoding="utf-8")
    n = len(truth)
    with pytest.raises(BuildError, match=rf"source ls: none of its {n} images could be used \({n} missing"):
        build(BuildOptions(sources=[load_source(str(definition))], out=tmp_path / "built", pseudo_labels=False),
              log=lambda _: None)
    assert not (tmp_path / "built").exists()


def test_negative_sizes_are_refused_and_every_bad_file_named(tmp_path, truth):
    root = label_studio_yolo(tmp_path / "yolo", truth)
    labels = sorted((root / "labels").iterdir())
    labels[0].write_text(labels[0].read_text() + "0 0.5 0.5 -0.2 0.3\n")
    labels[1].write_text(labels[1].read_text() + "0 0.98 0.5 0.2 0.2\n")  # runs off the right edge
    definition = tmp_path / "y.yaml"
    assert main(["dataset", "import", str(root), "--name", "y", "--out", str(definition), *MAPS]) == 0
    lines = []
    build(BuildOptions(sources=[load_source(str(definition))], out=tmp_path / "built", pseudo_labels=False,
                       val_fraction=0.0), log=lines.append)
    report = json.loads((tmp_path / "built" / "report.json").read_text())
    refused = [p for p in report["annotation_problems"] if "not positive" in p]
    assert len(refused) == 1 and labels[0].name in refused[0]
    assert any(labels[1].stem in f and "clipped" in f for f in report["boxes_out_of_range"])
    text = "\n".join(lines)
    assert labels[0].name in text and labels[1].stem in text  # named in the build's log too
    # the refused line is no box: the image keeps only its real ones
    built = np.loadtxt(tmp_path / "built" / "labels" / "train" / f"y__{labels[0].stem}.txt", ndmin=2)
    assert (built[:, 3:] > 0).all() and len(built) == len(truth[0].labels)


@pytest.mark.slow
def test_an_imported_zip_trains_finishes_and_evaluates_from_another_folder(tmp_path, truth):
    """The bureau's own labels beside a built-in source, by the definition's path, through the
    whole path: build, train (card, champion/challenger, promotion), train --finish, eval."""
    import os
    import subprocess
    import sys

    from detector.files import REPO_ROOT
    from tests.support.training import bootstrapped_pt

    samples = [s for s in load_source("garbage_overflow_cn", DATASETS).read() if len(s.labels)][100:112]
    for s in samples:
        s.labels = [RENAME[l] for l in s.labels]
    archive = zip_folder(cvat_images(tmp_path / "cvat", samples), tmp_path / "bureau-cvat.zip")
    shutil.rmtree(tmp_path / "cvat")
    start = bootstrapped_pt(tmp_path / "start.pt", n_images=4)
    work = tmp_path / "work"
    work.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}, "PYTHONPATH": str(REPO_ROOT),
           "HOME": str(tmp_path / "home"), "CUDA_VISIBLE_DEVICES": "", "MPLCONFIGDIR": str(tmp_path / "mpl")}

    def gridwatch(*args):
        done = subprocess.run([sys.executable, "-m", "serving.cli", *map(str, args)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    gridwatch("dataset", "import", archive, "--name", "bureau", "--out", "defs/bureau.yaml", *MAPS)
    gridwatch("dataset", "build", "--sources", "garbage_overflow_cn,defs/bureau.yaml", "--limit", "12",
              "--no-pseudo-labels", "--val-fraction", "0.3", "--out", "data")
    weights = tmp_path / "weights"
    out = gridwatch("train", "--data", "data/data.yaml", "--model", start, "--epochs", 1, "--imgsz", 64,
                    "--batch", 8, "--workers", 0, "--no-plots", "--no-int8", "--project", "runs", "--name", "t",
                    "--promote", "--weights-dir", weights)
    assert "PROMOTE" in out
    card = json.loads((weights / "gridwatch.json").read_text(encoding="utf-8"))
    assert {s["name"]: s["licence"] for s in card["sources"]} == {"garbage_overflow_cn": "CC BY 4.0",
                                                                    "bureau": "own labels (not for redistribution)"}
    assert (weights / "history").is_dir()
    out = gridwatch("train", "--finish", "--project", "runs", "--name", "t", "--no-int8", "--weights-dir", weights)
    assert "model card:" in out
    out = gridwatch("eval", "--model", weights / "gridwatch-fp32.onnx", "--data", "data", "--json")
    assert "bin_overflow" in json.loads(out)["classes"]


def test_eval_scores_an_imported_source_in_its_own_format(tmp_path, truth, capsys):
    shipped = Path(__file__).resolve().parents[2] / "weights" / "gridwatch-int8.onnx"
    export = cvat_images(tmp_path / "export", truth)
    definition = tmp_path / "bureau.yaml"
    assert main(["dataset", "import", str(export), "--name", "bureau", "--out", str(definition), *MAPS]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(shipped), "--data", str(definition), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "all images of source bureau"
    expected = Counter(TARGET[l] for s in truth for l in s.labels)
    assert {c: m["instances"] for c, m in out["classes"].items()} == dict(expected)
    assert main(["eval", "--model", str(shipped), "--data", str(definition), "--split", "val"]) == 2
    assert "has no 'val' split" in capsys.readouterr().err


def test_a_yolo_folder_without_class_names_says_how_to_give_them(tmp_path, truth):
    from training.data.importers import AnnotationError, read_yolo

    root = label_studio_yolo(tmp_path / "yolo", truth)
    assert read_yolo(root)[0].labels  # classes.txt names them (Label Studio's YOLO export)
    (root / "classes.txt").unlink()
    with pytest.raises(AnnotationError, match=r"options\.names"):
        read_yolo(root)
