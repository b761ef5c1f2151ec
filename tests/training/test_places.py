"""Validation split by place (issue #28, item 1): whole places on one side of the split, and
per-class AP on folds of whole places from `gridwatch eval --place-folds`."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pytest
import yaml
from PIL import Image

from serving.cli import main
from tests.support.shared_data import DATASETS
from training.data.dataset_build import NEAR_DUPLICATE_DISTANCE, BuildOptions, build
from training.evaluation.evaluate import EvalError, place_folds_of
from training.data.places import PLACE_DISTANCE, PLACES_FILE
from training.data.sources import load_source

pytestmark = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"no shared datasets at {DATASETS}")


def _phash(bgr: np.ndarray) -> imagehash.ImageHash:
    return imagehash.phash(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))


def _splits(out: Path) -> dict[str, str]:
    return {f.name: f.parent.name for f in (out / "images").glob("*/*") if f.is_file()}


@pytest.fixture
def second_views(tmp_path):
    """A YOLO source of real facade photos, each beside a second view of the same facade (4% cut
    off two sides, as a camera a step away sees it): further apart than a near-duplicate, within
    a place. Generated at test time from ../shared/datasets; nothing is copied into the repo."""
    folder = tmp_path / "views"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    (folder / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images", "names": {0: "signboard"}}))
    pairs = []
    for src in sorted((DATASETS / "facade_signs_spb" / "images").iterdir(), key=lambda p: p.name)[:80]:
        bgr = cv2.imread(str(src))
        h, w = bgr.shape[:2]
        view = bgr[int(h * 0.04):, int(w * 0.04):]
        if not NEAR_DUPLICATE_DISTANCE < _phash(bgr) - _phash(view) <= PLACE_DISTANCE:
            continue
        a, b = f"{src.stem}_a", f"{src.stem}_b"
        cv2.imwrite(str(folder / "images" / f"{a}.jpg"), bgr)
        cv2.imwrite(str(folder / "images" / f"{b}.jpg"), view)
        for stem in (a, b):
            (folder / "labels" / f"{stem}.txt").write_text("0 0.5 0.5 0.2 0.1\n")
        pairs.append((a, b))
        if len(pairs) == 30:
            break
    assert len(pairs) == 30
    definition = tmp_path / "views.yaml"
    definition.write_text(yaml.safe_dump({"name": "views", "path": str(folder), "format": "yolo", "licence": "CC0 1.0",
                                          "attribution": "generated views", "classes": {"signboard": "shop_sign"}}))
    return load_source(str(definition), tmp_path), pairs


def _straddling(out: Path, pairs) -> int:
    where = {Path(name).stem.split("__", 1)[1]: split for name, split in _splits(out).items()}
    return sum(where[a] != where[b] for a, b in pairs)


def test_second_views_of_one_place_never_straddle_the_split(tmp_path, second_views):
    source, pairs = second_views
    by_image = build(BuildOptions(sources=[source], out=tmp_path / "by_image", pseudo_labels=False, val_fraction=0.3),
                     log=lambda _: None)
    assert by_image  # the image split (near-duplicates only) lets views of one facade sit on both sides
    assert _straddling(tmp_path / "by_image", pairs) > 0
    build(BuildOptions(sources=[source], out=tmp_path / "by_place", pseudo_labels=False, val_fraction=0.3,
                       split_by="place"), log=lambda _: None)
    out = tmp_path / "by_place"
    assert _straddling(out, pairs) == 0
    assert set(_splits(out).values()) == {"train", "val"}
    report = json.loads((out / "report.json").read_text())
    assert report["places"] == [report["places"][0]] and "perceptual-hash clusters only" in report["places"][0]


def test_places_json_is_metadata_and_wins_over_the_hash(tmp_path, second_views):
    source, pairs = second_views
    # a city's own metadata: the first ten facades are one street, the rest one place each
    street = {f"{s}.jpg": "nevsky" for a, b in pairs[:10] for s in (a, b)}
    (source.path / PLACES_FILE).write_text(json.dumps(street))
    build(BuildOptions(sources=[source], out=tmp_path / "out", pseudo_labels=False, val_fraction=0.3,
                       split_by="place"), log=lambda _: None)
    places = json.loads((tmp_path / "out" / PLACES_FILE).read_text())
    splits = _splits(tmp_path / "out")
    nevsky = {splits[name] for name, place in places.items() if place == "views/nevsky"}
    assert len([p for p in places.values() if p == "views/nevsky"]) == 20 and len(nevsky) == 1
    (source.path / PLACES_FILE).write_text(json.dumps({"x.jpg": ""}))
    with pytest.raises(Exception, match="non-empty place names"):
        build(BuildOptions(sources=[source], out=tmp_path / "bad", pseudo_labels=False, split_by="place"),
              log=lambda _: None)


def test_real_sources_split_by_place_and_eval_folds(tmp_path, capsys):
    """The three shared sources, 40 images each: every place on one side, each source reported
    as grouped by hash (none has location metadata), and `gridwatch eval --place-folds` on the
    build's val split deals whole places into folds."""
    out = tmp_path / "build"
    rc = main(["dataset", "build", "--limit", "40", "--no-pseudo-labels", "--split-by", "place",
               "--val-fraction", "0.3", "--out", str(out)])
    assert rc == 0
    places = json.loads((out / PLACES_FILE).read_text())
    splits = _splits(out)
    assert set(places) == set(splits)
    sides: dict[str, set[str]] = {}
    for name, place in places.items():
        sides.setdefault(place, set()).add(splits[name])
    assert all(len(s) == 1 for s in sides.values())
    report = json.loads((out / "report.json").read_text())
    assert len(report["places"]) == 3 and all("no location metadata" in line for line in report["places"])
    capsys.readouterr()

    rc = main(["eval", "--model", str(Path(__file__).parents[2] / "weights" / "gridwatch-int8.onnx"),
               "--data", str(out / "data.yaml"), "--place-folds", "3", "--json"])
    answer = json.loads(capsys.readouterr().out)
    assert rc == 0 and answer["place_folds"]["k"] == 3
    assert answer["place_folds"]["groups"] == len({places[n] for n in splits if splits[n] == "val"})
    for name, s in answer["place_folds"]["classes"].items():
        assert s["min_ap50"] <= s["mean_ap50"] <= s["max_ap50"] and 1 <= s["folds"] <= 3
    assert "classes" in answer and "map50" in answer  # the plain eval object is still there

    # what `gridwatch train` puts on the card for such a build: the same figure, and the folds
    from training.fit.train import data_config, evaluate_by_place, evaluate_onnx, val_set

    model = Path(__file__).parents[2] / "weights" / "gridwatch-int8.onnx"
    val = val_set(data_config(out / "data.yaml"))
    whole, folds = evaluate_by_place(model, val, out / PLACES_FILE)
    assert folds is not None and folds.k == min(5, answer["place_folds"]["groups"])
    assert folds.grouping == report["places"]  # the card says how the build found the places
    assert whole.to_dict() == evaluate_onnx(model, val).to_dict()
    assert folds.held_out is None and "held_out" not in folds.to_dict()


def test_image_split_leaves_out_val_images_of_places_it_trained_on(tmp_path, capsys):
    """A build split by image has no places.json: places are found over train and val together,
    and a val image showing a place the model trained on (here a train photo taken again, 3% cut
    off two sides and re-encoded) is left out of the held-out figure and the folds. `gridwatch
    models card` writes that figure and the teacher comparison into the served cards and leaves
    their other text alone."""
    import shutil

    from training.fit.train import data_config, evaluate_by_place, val_set

    out = tmp_path / "build"
    assert main(["dataset", "build", "--limit", "30", "--no-pseudo-labels", "--val-fraction", "0.3",
                 "--out", str(out)]) == 0
    train = sorted(p for p in (out / "images" / "train").iterdir() if "synthetic" not in p.name)
    again = cv2.imread(str(train[0]))
    h, w = again.shape[:2]
    again = again[int(0.03 * h):, int(0.03 * w):]
    cv2.imwrite(str(out / "images" / "val" / f"{train[0].stem}-again.jpg"), again, [cv2.IMWRITE_JPEG_QUALITY, 70])
    (out / "labels" / "val" / f"{train[0].stem}-again.txt").write_text("")  # nothing labelled: only the place matters
    model = Path(__file__).parents[2] / "weights" / "gridwatch-int8.onnx"
    val = val_set(data_config(out / "data.yaml"))
    whole, folds = evaluate_by_place(model, val, out / PLACES_FILE, tiled=model)
    assert not (out / PLACES_FILE).exists() and folds is not None
    assert folds.seen_place_images >= 1 and folds.held_out.images == whole.images - folds.seen_place_images
    assert folds.tiled.result.images == folds.held_out.images and folds.tiled.model == model.name  # the same images
    assert sum(f.images for f in folds.folds) == folds.held_out.images
    held = folds.to_dict()["held_out"]
    assert held["seen_place_images"] == folds.seen_place_images and held["images"] == folds.held_out.images
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data", str(out), "--place-folds", "2", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["place_folds"]["held_out"]["seen_place_images"] == folds.seen_place_images
    assert answer["map50"] == whole.map50  # the plain figure is still over every val image
    assert main(["eval", "--model", str(model), "--data", str(out), "--place-folds", "2"]) == 0
    assert "share a place with a train image and are left out" in capsys.readouterr().out

    weights = tmp_path / "weights"
    shutil.copytree(model.parent, weights, ignore=shutil.ignore_patterns("history", "README.md", "load-decision.md"))
    hand_written = "A note a person added to the card by hand."
    with (weights / "gridwatch.md").open("a", encoding="utf-8") as md:
        md.write(f"\n{hand_written}\n")
    capsys.readouterr()
    assert main(["models", "card", "--data", str(out / "data.yaml"), "--weights", str(weights)]) == 0
    log = capsys.readouterr().out
    assert "held out by place" in log and "against the COCO teacher" in log
    card = json.loads((weights / "gridwatch-int8.json").read_text())
    assert card["place_folds"]["held_out"]["seen_place_images"] == folds.seen_place_images
    assert card["place_folds"]["tiled"]["model"] == "gridwatch-int8.onnx"  # the served file, tiled
    assert card["place_folds"]["tiled"]["images"] == folds.held_out.images
    assert set(card["teacher_check"]["counts"]) == {"coco-yolov8n-int8.onnx", "coco-yolo11n-320-int8.onnx"}
    md = (weights / "gridwatch.md").read_text()
    assert md.count("## Held out by place") == 1 and md.count("## Against the COCO teacher") == 1
    assert hand_written in md and md.index("## Against the COCO teacher") < md.index("## Int8")
    assert main(["models", "card", "--data", str(out / "data.yaml"), "--weights", str(weights)]) == 0
    assert (weights / "gridwatch.md").read_text() == md  # measured again: the same sections, replaced in place


def test_place_folds_keep_places_whole_and_balanced():
    groups = {Path(f"{p}-{i}.jpg"): p for p, n in (("a", 5), ("b", 3), ("c", 3), ("d", 1)) for i in range(n)}
    folds = place_folds_of(groups, 2)
    for place in "abcd":
        assert len({folds[path] for path, p in groups.items() if p == place}) == 1
    sizes = [sum(1 for f in folds.values() if f == k) for k in (0, 1)]
    assert sorted(sizes) == [6, 6]
    with pytest.raises(EvalError, match="cannot fill"):
        place_folds_of(groups, 5)


def test_card_shows_place_folds_beside_the_val_figure_and_flags_synthetic_only(tmp_path):
    from tests.training.test_card import _card
    from training.promotion.model_card import render_markdown, write_card

    folds = {"k": 3, "groups": 17, "grouping": ["facade_signs_spb: 40 images in 17 places (0 with 2+ images), by x"],
             "classes": {"push_cart": {"mean_ap50": 0.61, "min_ap50": 0.42, "max_ap50": 0.8, "folds": 3}}}
    card = _card(place_folds=folds, classes=["garbage_bin", "push_cart", "flyer", "banner"])
    md = render_markdown(card)
    assert "## Held out by place" in md and "| push_cart | 0.700 | 0.610 | 0.420 | 0.800 | 3 |" in md
    assert "flyer and banner: figures from synthetic images only." in md
    assert json.loads(write_card(card, tmp_path)[1].read_text())["place_folds"]["groups"] == 17
    plain = json.loads(write_card(_card(), tmp_path / "plain")[1].read_text())
    assert "place_folds" not in plain  # as cards before the field
    assert "synthetic images only" not in render_markdown(_card())  # no flyer class: nothing to say
    tiled = {"model": "m-int8.onnx", "images": 40, "source_files": 38,
             "classes": {"push_cart": {"instances": 9, "ap50": 0.55}}}
    md = render_markdown(_card(place_folds={**folds, "tiled": tiled}, classes=["push_cart"]))
    assert "| class | AP50 real val | m-int8.onnx tiled | fold mean |" in md
    assert "| push_cart | 0.700 | 0.550 | 0.610 | 0.420 | 0.800 | 3 |" in md and "38 of them read from" in md


def test_a_measured_section_the_card_no_longer_has_is_removed_and_the_rest_kept():
    from tests.training.test_card import _card
    from training.promotion.model_card import render_markdown, splice_measured_sections

    folds = {"k": 2, "groups": 3, "grouping": [], "classes": {"push_cart": {"mean_ap50": 0.6, "min_ap50": 0.5,
                                                                           "max_ap50": 0.7, "folds": 2}}}
    teachers = {"model": "m.onnx", "images": 3, "score": 0.5, "iou": 0.5,
                "counts": {"t.onnx": {"truck": {"teacher": 4, "found": 1, "ours": 2}}}}
    written = render_markdown(_card(place_folds=folds, teacher_check=teachers)) + "\nA hand-written note.\n"
    assert "| truck | 1 of 4 (25%) | 2 |" in written
    spliced = splice_measured_sections(written, _card(teacher_check=teachers))
    assert "## Held out by place" not in spliced and "| truck | 1 of 4 (25%) | 2 |" in spliced
    assert spliced.endswith("\nA hand-written note.\n") and "## Int8" in spliced
    assert splice_measured_sections(spliced, _card(place_folds=folds, teacher_check=teachers)) == written
