"""The learning loop end to end on real images: folder cameras -> pipeline -> cases -> review
decisions through the API -> `gridwatch review export` -> `gridwatch retrain` (one epoch on a
handful of images) -> champion/challenger on the base and review val splits -> the challenger promoted into a
running service while a client keeps posting to /v1/detect -> a broken model refused.

A one-epoch challenger at a small input size may well lose, so the decision is checked
against its own scores, and the live swap then installs the challenger explicitly, through the
same `install` a promotion uses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.settings import Settings
from tests.support.service import DetectingClient, RunningService, pick_port, wait_for
from tests.support.shared_data import DATASETS
from tests.support.web import add_user, http_sign_in
from training.data.yolo_format import label_path, read_labels

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [REPO / "weights" / f"gridwatch-{kind}.onnx" for kind in ("fp32", "int8")]
CAMERAS = ("cam-north", "cam-east", "cam-south")


def _frames(count: int) -> list[tuple[Path, list[float]]]:
    """Real garbage_overflow_cn frames with a bin_overflow box (pixels), from the end of the
    folder: the base sources' --limit takes the first images, so none is also a base image."""
    import cv2

    folder = DATASETS / "garbage_overflow_cn" / "images"
    frames = []
    for image in sorted(folder.glob("*.jpg"), reverse=True):
        boxes = [line.box for line in read_labels(label_path(image, folder)) if line.is_box and line.class_id == 1]
        if boxes:
            h, w = cv2.imread(str(image)).shape[:2]
            cx, cy, bw, bh = boxes[0]
            frames.append((image, [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]))
        if len(frames) == count:
            return frames
    pytest.skip("not enough labelled garbage_overflow_cn images")


def _street_cameras(folder: Path) -> list:
    """Three folder cameras, each three real garbage scenes of 80 s (a frame every 10 s) with an
    empty street of 50 s after each, so every scene's violations open and close."""
    from serving.cameras.schema import parse_cameras

    street = sorted((DATASETS / "facade_signs_spb" / "images").iterdir())[0]
    frames = _frames(9)
    entries = []
    for c, camera in enumerate(CAMERAS):
        (folder / camera).mkdir(parents=True)
        shown = [shot for image, _ in frames[c::3] for shot in [image] * 8 + [street] * 5]
        for n, image in enumerate(shown):
            (folder / camera / f"{n:04d}{image.suffix}").symlink_to(image)
        entries.append({
            "id": camera, "source": str(folder / camera), "division": "370202", "grid": "370202001001001",
            "location": {"lat": 36.0671, "lon": 120.3826, "address": "Zhongshan Rd 1"}, "sample_every": 10,
            "zones": [{"name": "bins", "type": "bin_area", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
            "rules": [{"violation": "exposed_garbage", "zone_types": ["bin_area"], "min_score": 0.3, "dwell": 30}],
        })
    return list(parse_cameras({"cameras": entries}, folder).cameras)


def _cli(*args: str, timeout: int) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "serving.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_decisions_export_retrain_promote_live(tmp_path, shared_dir) -> None:
    pytest.importorskip("ultralytics")
    from training.promotion.promote import decision_classes, install, score
    from training.fit.train import evaluate_onnx, split_sources, split_synthetic, val_set
    from training.data.yolo_format import read_data_yaml

    live = tmp_path / "weights-live"
    live.mkdir()
    for model in SHIPPED:
        shutil.copyfile(model, live / model.name)
    settings = Settings(data_dir=tmp_path / "data", model=live / "gridwatch-int8.onnx", port=pick_port(),
                        model_watch_s=0.2, admin_key="gw_test_admin_key_loop_0001", reopen_policy="new",
                        dedup_cooldown_s=0)
    server = RunningService(settings, file_cameras=_street_cameras(tmp_path / "media"))
    try:
        # Cases from real frames through the pipeline: three folder cameras replay garbage scenes
        # through the served model, tracker and rules into cases.
        assert server.service.cameras.pipeline.wait(120)
        with server.client(server.key("reviewer")) as api:
            cases = api.get("/v1/cases", params={"limit": 500}).json()["items"]
        numbers = [c["case_number"] for c in cases]
        assert len(numbers) >= 8 and {c["camera"] for c in cases} == set(CAMERAS)
        assert {c["model_version"] for c in cases} == {server.service.detector.version}

        # Decisions through the API (/v1 for machines, the review page's JSON route for a reviewer's
        # own boxes and reject reasons): a correction with a redrawn box, a false alarm, an object
        # that is not a violation where it is, confirmations for the rest.
        add_user(server, "rita")
        with server.client() as page:
            assert http_sign_in(page, "rita").status_code in (200, 303)
            csrf = {"X-CSRF-Token": page.cookies["gw_csrf"]}
            x1, y1, x2, y2 = cases[0]["box"]
            decisions = [
                (numbers[0], {"action": "correct", "violation": "bin_overflow",
                              "boxes": [[x1 - 6, y1 - 6, x2 + 6, y2 + 6]]}),
                (numbers[1], {"action": "reject", "reason": "false_alarm"}),
                (numbers[2], {"action": "reject", "reason": "not_here"}),
            ]
            for number, body in decisions:
                version = next(c["version"] for c in cases if c["case_number"] == number)  # the page names it
                answer = page.post(f"/review/cases/{number}/decision", json={**body, "version": version}, headers=csrf)
                assert answer.status_code == 200, answer.text
        with server.client(server.key("reviewer")) as api:
            for number in numbers[3:]:
                assert api.post(f"/v1/cases/{number}/review", json={"action": "confirm"}).status_code == 200

        # Export, with the command a city runs.
        reviews = tmp_path / "city-reviews"
        exported = json.loads(_cli("review", "export", "--out", str(reviews), "--data-dir", str(settings.data_dir),
                                   "--model", str(live / "gridwatch-int8.onnx"), timeout=180).stdout)
        manifest = json.loads((reviews / "manifest.json").read_text())
        # One image per evidence frame, carrying every case on it: each case on exactly one frame.
        assert exported["written"] == len(manifest["frames"]) and set(exported["labels_by_camera"]) == set(CAMERAS)
        assert sorted(n for f in manifest["frames"].values() for n in f["cases"]) == sorted(numbers)

        # Retrain: one epoch, a handful of base images, a small input; its own weights folder.
        champion_dir = tmp_path / "weights-retrain"
        champion_dir.mkdir()
        for model in SHIPPED:
            shutil.copyfile(model, champion_dir / model.name)
        before = {p.name: p.read_bytes() for p in champion_dir.iterdir() if p.is_file()}
        runs = tmp_path / "runs"
        # One base source given by its definition's path (as `gridwatch dataset import` writes one):
        # it must reach the card, not fail at the end with "no source named".
        import yaml

        own = yaml.safe_load((REPO / "datasets" / "garbage_overflow_cn.yaml").read_text(encoding="utf-8"))
        own.update(name="city_bins", path=str(DATASETS / "garbage_overflow_cn"), licence="city's own")
        definition = tmp_path / "defs" / "city_bins.yaml"
        definition.parent.mkdir()
        definition.write_text(yaml.safe_dump(own, allow_unicode=True), encoding="utf-8")
        done = _cli("retrain", "--review", str(reviews), "--epochs", "1", "--imgsz", "160", "--batch", "8",
                    "--sources", f"{definition},thela_india,facade_signs_spb",
                    "--limit", "12", "--synthetic", "0", "--crops", "320", "--repeat-threshold", "--device", "cpu",
                    "--workers", "0", "--no-plots", "--weights-dir",
                    str(champion_dir), "--project", str(runs), "--name", "loop", "--cache-dir",
                    str(tmp_path / "teacher"), timeout=900)
        out = done.stdout
        assert "base real val, must not be worse" in out and "review val, must be better" in out
        assert "repeat_factor_sampling" in json.dumps(json.loads((runs / "loop" / "train" / "export" / "gridwatch.json")
                                                                 .read_text())["training"])

        # The review frames are split by camera and day: no such group has frames on both sides.
        data = read_data_yaml(runs / "loop" / "dataset" / "data.yaml")
        built = json.loads((runs / "loop" / "dataset" / "manifest.json").read_text())
        group_of = {stem: (frame["camera"], frame["case_number"][:10]) for stem, frame in manifest["frames"].items()}
        sides: dict[tuple[str, str], set[str]] = {}
        for image in built["images"]:
            if image["source"] == reviews.name:
                sides.setdefault(group_of[Path(image["original"]).stem], set()).add(image["split"])
        assert {camera for camera, _ in sides} == set(CAMERAS)
        assert all(len(s) == 1 for s in sides.values()), sides
        assert {"train", "val"} <= set().union(*sides.values())

        # The card: the decision follows from its scores, and the review data is counted by camera and class.
        card = json.loads((runs / "loop" / "train" / "export" / "gridwatch.json").read_text())
        assert {s["name"]: s["licence"] for s in card["sources"]}["city_bins"] == "city's own"
        d = card["decision"]
        assert d["promote"] == (d["challenger"] >= d["champion"] and d["review_challenger"] > d["review_champion"])
        assert ("decision: PROMOTE" in out) == d["promote"] and ("decision: KEEP CHAMPION" in out) == (not d["promote"])
        # The card counts the review frames the dataset kept: all of them, as no two are the same image
        # (two cases on one evidence frame are one image), so the build drops none as an exact duplicate.
        kept = {Path(image["original"]).stem: image["split"] for image in built["images"]
                if image["source"] == reviews.name}
        dropped = [name for group in json.loads((runs / "loop" / "dataset" / "report.json").read_text())["exact_duplicates"]
                   for name in group["dropped"] if name.startswith(f"{reviews.name}/")]
        assert dropped == [] and set(kept) == set(manifest["frames"])
        for camera in CAMERAS:
            for kind, key in (("human", "human"), ("pseudo", "pseudo"), ("negative", "negatives")):
                for split in ("train", "val"):
                    counted = sum(cells.get(f"{kind} {split}", 0) for cells in card["review_data"][camera].values())
                    expected = sum(len(f[key]) for stem, f in manifest["frames"].items()
                                   if f["camera"] == camera and kept.get(stem) == split)
                    assert counted == expected, (camera, kind, split)
        assert sum(n for by_class in card["review_data"].values() for cells in by_class.values()
                   for kind, n in cells.items() if kind.startswith("human")) > 0
        # The champion's review score, recomputed here on the same review val split.
        real, _ = split_synthetic(val_set(data))
        base, review = split_sources(real, [reviews.name])
        assert review.images and base.images
        # Every score, recomputed here on the same splits: the champion (the shipped file) and the challenger.
        exported_fp32 = runs / "loop" / "train" / "export" / "gridwatch-fp32.onnx"
        # The review split is judged on the reviewers' labels only (training/evaluation/review_judging.py).
        from training.promotion.retrain import review_source
        from training.evaluation.review_judging import human_review_split

        judged = human_review_split(review, [review_source(reviews)])
        assert "review val split judged on human labels only" in out
        for model, split, key in ((SHIPPED[0], review, "review_champion"), (SHIPPED[0], base, "champion"),
                                  (exported_fp32, review, "review_challenger"), (exported_fp32, base, "challenger")):
            result = judged.evaluate(model) if split is review else evaluate_onnx(model, split)
            assert score(result, decision_classes(result)) == pytest.approx(d[key], abs=1e-9), key
        challenger = {name: runs / "loop" / "train" / "export" / name for name in ("gridwatch-fp32.onnx", "gridwatch-int8.onnx")}
        after = {p.name: p.read_bytes() for p in champion_dir.iterdir() if p.is_file()}  # history/ beside them
        if d["promote"]:
            assert after["gridwatch-int8.onnx"] == challenger["gridwatch-int8.onnx"].read_bytes()
        else:
            assert after == before  # kept the champion: weights untouched

        # Promotion into the running service while a client keeps detecting.
        with DetectingClient(server, _frames(1)[0][0].read_bytes()) as client:
            versions = client.versions
            wait_for(lambda: len(versions) >= 3)
            shipped_version = versions[0]
            install(challenger, live)
            wait_for(lambda: versions[-1] != shipped_version, timeout=60)
            assert versions[-1] == card["model_version"] != shipped_version
            # A broken model file is refused; the promoted model keeps serving.
            (live / "broken.onnx").write_bytes(b"\x08\x07 half a model")
            with server.client(server.admin_key) as admin:
                refused = admin.post("/v1/models/reload", json={"file": "broken.onnx"})
                assert refused.status_code == 422, refused.text
                seen = len(versions)
                wait_for(lambda: len(versions) >= seen + 3)
                assert admin.get("/v1/models").json()["model_version"] == card["model_version"]
        assert client.failures == []
        assert versions[-1] == card["model_version"]
    finally:
        server.stop()


def _hand_export(folder: Path, cameras: dict[str, list[str]], frames: list[tuple[Path, list[float]]]) -> Path:
    """A review export as `gridwatch review export` writes one, made by hand: each frame a confirmed
    bin_overflow case of a camera on a day (camera -> one day per frame, in turn)."""
    import cv2

    from serving.review_export import write_definitions
    from training.data.sources import gridwatch_classes

    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    names = list(gridwatch_classes())
    shots = [(camera, day) for camera, days in cameras.items() for day in days]
    assert len(shots) == len(frames)
    manifest = {}
    for i, ((camera, day), (image, box)) in enumerate(zip(shots, frames)):
        stem = f"GW{day}-ABCDEF-00000{i}-{i:012d}"
        shutil.copyfile(image, folder / "images" / f"{stem}.jpg")
        h, w = cv2.imread(str(image)).shape[:2]
        x1, y1, x2, y2 = box
        (folder / "labels" / f"{stem}.txt").write_text(
            f"{names.index('bin_overflow')} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}\n")
        manifest[stem] = {"stem": stem, "case_number": stem[:25], "camera": camera, "decision": "confirmed",
                          "human": [["bin_overflow", box]], "pseudo": [], "negatives": []}
    (folder / "manifest.json").write_text(json.dumps({"frames": manifest, "names": names}))
    write_definitions(folder, names, {camera: {} for camera in cameras})
    return folder


def _retrain(*args: str | Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.cli", "retrain", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_retrain_refuses_reviews_it_cannot_judge_on_before_training(tmp_path, shared_dir) -> None:
    """One camera on one day is one split group: all train or all val, so there is nothing to learn
    from or nothing to judge on. The command says so after the dataset build, before any training."""
    reviews = _hand_export(tmp_path / "one-camera", {"cam-only": ["20261123"] * 3}, _frames(3))
    runs = tmp_path / "runs"
    done = _retrain("--review", reviews, "--limit", "4", "--synthetic", "0", "--no-pseudo-labels",
                    "--project", runs, "--name", "one", "--weights-dir", REPO / "weights", timeout=300)
    assert done.returncode == 2
    assert "review frames on one side of the split only" in done.stderr
    assert (runs / "one" / "dataset" / "data.yaml").is_file() and not (runs / "one" / "train").exists()
    missing = _retrain("--review", tmp_path / "nothing", timeout=120)
    assert missing.returncode == 2 and "no source.yaml" in missing.stderr


@pytest.mark.slow
def test_retrain_class_refit_grafts_its_rows_into_the_served_int8(tmp_path, shared_dir) -> None:
    """`gridwatch retrain --refit-classes`: at the served model's input size, and its int8 file is
    the served one with the taught rows grafted in, every other int8 weight and scale unchanged
    (a fresh calibration would move every class a little). A refit at another size is refused
    before anything is built."""
    import numpy as np

    from tests.support.onnx_graph import assert_int8_differs_only_in_rows
    from training.promotion.retrain import served_model

    champion_dir = tmp_path / "weights"
    champion_dir.mkdir()
    for model in SHIPPED:
        shutil.copyfile(model, champion_dir / model.name)
    days = ["20261120", "20261121", "20261122", "20261123"]
    reviews = _hand_export(tmp_path / "city", {camera: days for camera in CAMERAS}, _frames(12))
    runs = tmp_path / "runs"
    common = ("--review", reviews, "--refit-classes", "bin_overflow", "--limit", "4", "--synthetic", "0",
              "--no-pseudo-labels", "--weights-dir", champion_dir, "--project", runs)

    wrong = _retrain(*common, "--imgsz", "320", "--name", "wrong-size", timeout=120)
    assert wrong.returncode == 2, wrong.stderr
    assert "exported at 448 px: train at --imgsz 448" in wrong.stderr
    assert not (runs / "wrong-size").exists()
    broken = tmp_path / "broken-weights"
    broken.mkdir()
    (broken / "gridwatch-int8.onnx").write_bytes(b"\x08\x07 half a model")
    unreadable = _retrain(*common, "--weights-dir", broken, "--name", "broken", timeout=120)
    assert unreadable.returncode == 2 and "gridwatch-int8.onnx: not a readable ONNX file" in unreadable.stderr
    assert not (runs / "broken").exists()

    done = _retrain(*common, "--epochs", "1", "--batch", "8", "--device", "cpu", "--workers", "0", "--no-plots",
                    "--name", "refit", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "score rows of bin_overflow grafted into" in done.stdout
    export = runs / "refit" / "train" / "export"
    card = json.loads((export / "gridwatch.json").read_text())
    assert card["training"]["class_refit"] == ["bin_overflow"] and card["training"]["imgsz"] == 448
    assert "score rows of bin_overflow grafted" in card["int8"]["calibration"]
    names = served_model(SHIPPED[1]).names
    taught = np.array([names[k] == "bin_overflow" for k in sorted(names)])
    assert_int8_differs_only_in_rows(SHIPPED[1], export / "gridwatch-int8.onnx", taught)
