"""Labelled frames export with the review decisions: the labeller's boxes are the frame's
labels (human, no pseudo-labels), the frame is the stored original unaltered; deterministic
and incremental like the case frames."""

from __future__ import annotations

import json
import subprocess
import sys

from serving.labelling.queue import LabelBox
from serving.review_export import export_reviews
from tests.support.labelling import queue_samples


def test_labelled_frames_export_incrementally(run_service, dataset_images, shared_detector, tmp_path) -> None:
    server = run_service()
    service = server.service
    ids = queue_samples(server, dataset_images, 3, camera="cam-a") + queue_samples(server, dataset_images[3:], 1,
                                                                                    camera="cam-b")
    queue = service.labelling
    first = queue.get(ids[0])
    w, h = first.width, first.height
    queue.save(ids[0], [LabelBox(class_name="fire hydrant", box=[0, 0, w / 2, h / 4]),
                        LabelBox(class_name="car", box=[w / 4, h / 2, w, h])], labeller="amy")
    queue.save(ids[1], [], labeller="amy")  # nothing of the model's classes in it
    queue.skip(ids[2], labeller="amy")
    queue.save(ids[3], [LabelBox(class_name="person", box=[10, 10, 50, 90])], labeller="bo")

    out = tmp_path / "city"
    taxonomy = service.taxonomy
    report = export_reviews(service.db, service.evidence, shared_detector, taxonomy, out, cameras=["cam-a"])
    assert report.labelled == 2 and len(report.written) == 2 and report.skipped == {}
    manifest = json.loads((out / "manifest.json").read_text())
    names = manifest["names"]
    frames = sorted(manifest["frames"].values(), key=lambda f: f["stem"])
    assert all(f["decision"] == "labelled" and f["camera"] == "cam-a" and f["pseudo"] == [] for f in frames)
    boxed = next(f for f in frames if f["human"])
    assert boxed["human"] == [["fire hydrant", [0.0, 0.0, round(w / 2, 1), round(h / 4, 1)]],
                              ["car", [round(w / 4, 1), round(h / 2, 1), float(w), float(h)]]]
    assert boxed["labelled_by"] == "amy" and boxed["sampled_for"] == ["score_band"]
    assert boxed["model_version"] == service.detector.version
    lines = [line.split() for line in (out / "labels" / f"{boxed['stem']}.txt").read_text().splitlines()]
    assert [int(line[0]) for line in lines] == [names.index("fire hydrant"), names.index("car")]
    assert [float(v) for v in lines[0][1:]] == [0.25, 0.125, 0.5, 0.25]
    assert [float(v) for v in lines[1][1:]] == [0.625, 0.75, 0.75, 0.5]
    empty = next(f for f in frames if not f["human"])
    assert (out / "labels" / f"{empty['stem']}.txt").read_text() == ""  # an image with none of the classes
    image = out / "images" / f"{boxed['stem']}.png"
    assert image.read_bytes() == service.evidence.resolve(first.path).read_bytes()
    assert report.labels_by_camera == {"cam-a": {"human": {"fire hydrant": 1, "car": 1}, "pseudo": {}, "negative": {}}}

    # Again: nothing new, nothing rewritten.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = export_reviews(service.db, service.evidence, shared_detector, taxonomy, out, cameras=["cam-a"])
    assert again.written == [] and again.already_there == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # The command over every camera adds only cam-b's frame.
    cli = subprocess.run(
        [sys.executable, "-m", "serving.cli", "review", "export", "--out", str(out),
         "--data-dir", str(service.settings.data_dir), "--model", str(shared_detector.info.path)],
        capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    summary = json.loads(cli.stdout)
    assert (summary["written"], summary["labelled"], summary["already_there"]) == (1, 1, 2)
    assert {p for p in out.rglob("*") if p.is_file()} - set(before) == {
        out / "images" / f"{stem}.png" for stem in json.loads((out / "manifest.json").read_text())["frames"]
        if stem.startswith("label-cam-b-")} | {
        out / "labels" / f"{stem}.txt" for stem in json.loads((out / "manifest.json").read_text())["frames"]
        if stem.startswith("label-cam-b-")}
    for path, data in before.items():
        if path.parent.name in ("images", "labels"):
            assert path.read_bytes() == data  # frames already there untouched
