"""Reviewed cases become training data: `gridwatch review export --out DIR`.

Each reviewed case gives its newest original evidence frame, written as a dataset source in
the layout of ../shared/datasets (images/, YOLO labels/, data.yaml) with its definition
(source.yaml: the city's own licence, the cameras as attribution) and a manifest of what
every label is:

- confirmed or corrected: the reviewer's boxes (or the detection's box) are human labels of
  the detector class behind the final violation;
- rejected as "not a violation here": the object is real, so its box stays a human label;
- rejected as a false alarm: a hard negative, that class is absent there (the model's own
  detection of it is removed);
- the other objects in the frame: pseudo-labels from the current model above a high score,
  so each frame is fully labelled;
- rejected as a duplicate or a bad image, or without a reason: not exported (and a frame
  exported before whose every case is now such is taken out of the folder again);
- a truck load case whose reviewer said what the load was (`review_load`): its boxes with
  that load under `loads` ([load, box]), which `gridwatch second-stage train` takes over what
  the confirm or reject would imply (a false alarm has no truck, so no load).

A frame is exported once, however many cases it is the newest original of (two violations
in one frame): its labels are those of every exported case on it, in case order (the
manifest lists them under `cases`; `case_number` is the first, whose day is the frame's
split day), with pseudo-labels computed once and none where any case labelled an object
or said it is absent.

Frames labelled in the review page's labelling mode (active learning: frames the model was
unsure about) follow the case frames: the labeller drew or fixed every box of the frame,
so all of its labels are human ones and no pseudo-labels are added (a frame saved with no
box is an image with none of the model's classes in it). Skipped ones are not exported.

Deterministic and incremental: frames are named by camera and content hash (labelled ones
also by time), taken in case (or item) order, and an image already in DIR is never written
again. A run selects frames by the decisions it is given (--since, --camera) and labels each
from all of its cases; a frame already there whose cases or decision times changed (a second
case on it reviewed later, a case decided again) gets its label file and manifest entry
rewritten, its image kept; with no new decision nothing is rewritten.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from detector.boxes import box_iou
from detector.detections import Detections
from detector.runtime import Detector
from detector.taxonomy import Taxonomy
from serving.evidence import EvidenceFrame, EvidenceStore
from serving.frame_boxes import unit_box
from serving.labelling.queue import labelled_items
from serving.store.db import Database
from serving.store.models import Case, Evidence, LabellingItem

PSEUDO_SCORE = 0.5  # "above a high threshold": below it a pseudo-label teaches more noise than objects
SAME_OBJECT_IOU = 0.5
CLASS_FROM_DETECTION_IOU = 0.3
SKIPPED_REASONS = ("duplicate", "bad_image", "")  # nothing to learn that another frame does not say


@dataclass(frozen=True)
class FrameLabels:
    """One exported frame: YOLO lines and what each kind of label came from."""

    stem: str
    case_number: str  # the frame's first case ("" for a labelled frame): its day is the frame's split day
    camera: str
    decision: str  # "cases" for a frame of reviewed cases (see `decisions`), "labelled" for a labelled one
    human: list[tuple[str, list[float]]]
    pseudo: list[tuple[str, list[float]]]
    negatives: list[tuple[str, list[float]]]  # boxes whose class is absent there
    sha256: str = ""  # a frame of cases: its content, the key it is exported under once
    cases: list[str] = field(default_factory=list)  # every case whose labels the frame carries, in case order
    decisions: list[str] = field(default_factory=list)  # per case: confirmed, corrected, rejected:<reason>
    reviewed_at: list[str] = field(default_factory=list)  # per case: when it was decided (a later one relabels)
    # The reviewers' load labels of truck boxes ([load, box], in case order; see the module's note).
    loads: list[tuple[str, list[float]]] = field(default_factory=list)


@dataclass
class ExportReport:
    out: str
    written: list[str] = field(default_factory=list)
    relabelled: list[str] = field(default_factory=list)  # frames already there, labels rewritten for new decisions
    # Frames exported earlier whose every case was since re-decided into what is not exported
    # (a duplicate, a bad image): taken out again, so no stale label teaches the next model.
    withdrawn: list[str] = field(default_factory=list)
    labelled: int = 0  # of `written`, frames from the labelling queue
    already_there: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    labels_by_camera: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)


def target_class(violation: str, box: Sequence[float], seen: Detections, taxonomy: Taxonomy,
                 names: Sequence[str]) -> str | None:
    """The detector class behind `violation` at `box`: what the model called the object there
    when that is one of the violation's classes, else the violation's first class it has."""
    classes = [c for c in taxonomy[violation].detector_classes if c in names]
    if not classes:
        return None
    candidates = seen.with_classes(set(classes))
    if len(candidates):
        overlap = box_iou(candidates.xyxy, np.asarray([box], np.float32))[:, 0]
        best = int(np.argmax(overlap))
        if overlap[best] >= CLASS_FROM_DETECTION_IOU:
            return candidates.class_names[best]
    return classes[0]


def decision_of(case: Case) -> str:
    return case.review_status if case.review_status != "rejected" else f"rejected:{case.review_reason}"


def exported(case: Case) -> bool:
    """Whether the case's decision says something to learn (SKIPPED_REASONS say nothing)."""
    return not (case.review_status == "rejected" and case.review_reason in SKIPPED_REASONS)


def case_labels(case: Case, seen: Detections, taxonomy: Taxonomy, names: Sequence[str]
                ) -> tuple[list[tuple[str, list[float]]], list[tuple[str, list[float]]]]:
    """(human labels, hard negatives) that one case's decision gives its frame."""
    if case.review_reason == "false_alarm":
        cls = target_class(case.violation, case.box, seen, taxonomy, names) if case.box else None
        return [], [(cls, [float(v) for v in case.box])] if cls else []
    human = []
    for box in case.review_boxes or ([case.box] if case.box else []):
        cls = target_class(case.violation, box, seen, taxonomy, names)
        if cls is not None:
            human.append((cls, [float(v) for v in box]))
    return human, []


def _covered(cls: str, box: Sequence[float], labels: list[tuple[str, list[float]]]) -> bool:
    """Whether `labels` has the same object: the same class at IoU >= SAME_OBJECT_IOU."""
    same_class = [b for c, b in labels if c == cls]
    return bool(same_class) and float(box_iou(np.asarray([box], np.float32),
                                              np.asarray(same_class, np.float32)).max()) >= SAME_OBJECT_IOU


def _overlaps(box: Sequence[float], boxes: list[list[float]]) -> bool:
    """Whether `box` is the same object as one of `boxes` (IoU >= SAME_OBJECT_IOU), any class."""
    return bool(boxes) and float(box_iou(np.asarray([box], np.float32),
                                         np.asarray(boxes, np.float32)).max()) >= SAME_OBJECT_IOU


def frame_labels(cases: Sequence[Case], seen: Detections, taxonomy: Taxonomy, names: Sequence[str], stem: str,
                 sha256: str) -> FrameLabels | None:
    """The labels of one evidence frame from every exported case on it (in case order): each
    case's human labels and hard negatives, then pseudo-labels for the rest, computed once.
    None when no case gives the frame a label."""
    human: list[tuple[str, list[float]]] = []
    negatives: list[tuple[str, list[float]]] = []
    loads: list[tuple[str, list[float]]] = []
    for case in cases:
        case_human, case_negatives = case_labels(case, seen, taxonomy, names)
        if case.review_load:
            loads += [(case.review_load, b) for _, b in case_human]
        # Two cases on one object (two violations of one class) label it once: the first case's box.
        human += [(c, b) for c, b in case_human if not _covered(c, b, human)]
        negatives += [(c, b) for c, b in case_negatives if not _covered(c, b, negatives)]
    if not human and not negatives:
        return None
    # A reviewer who labelled the object there outweighs another case's "not there" of the same object.
    negatives = [(c, b) for c, b in negatives if not _covered(c, b, human)]
    pseudo = []
    # Where a person decided, the model's box for that object does not survive, whatever it called
    # it: a correction (exposed garbage -> overflowing bin) must not keep the model's garbage_pile
    # box on the same object. Violation classes only: a person or a car beside the object is another one.
    decided = [b for _, b in human + negatives] + [[float(v) for v in c.box] for c in cases if c.box]
    violation_classes = set(taxonomy.detector_classes.get("violation", ()))
    for box, cls, score in zip(seen.xyxy, seen.class_names, seen.scores):
        if score < PSEUDO_SCORE or _covered(cls, box, human + negatives):
            continue  # below it: noise; covered: the reviewers' label (or absence) of this object wins
        if cls in violation_classes and _overlaps(box, decided):
            continue
        pseudo.append((cls, [round(float(v), 1) for v in box]))
    return FrameLabels(stem, cases[0].case_number, cases[0].camera, "cases", human, pseudo, negatives,
                       sha256=sha256, cases=[c.case_number for c in cases],
                       decisions=[decision_of(c) for c in cases], reviewed_at=reviewed_times(cases), loads=loads)


def reviewed_times(cases: Sequence[Case]) -> list[str]:
    return [c.reviewed_at.isoformat() if c.reviewed_at else "" for c in cases]


def yolo_lines(labels: FrameLabels, names: Sequence[str], width: int, height: int) -> str:
    lines = []
    for cls, (x1, y1, x2, y2) in labels.human + labels.pseudo:
        # Cut to the image: a label outside [0, 1] would poison training; a box stored before
        # boxes were clipped at every entry point may still reach past the frame.
        inside = unit_box((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
        if inside is None:
            continue
        cx, cy, w, h = inside
        lines.append(f"{names.index(cls)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return "".join(line + "\n" for line in lines)


REVIEWED = ("confirmed", "corrected", "rejected")


def newest_original(case: Case) -> Evidence | None:
    """The case's newest original evidence frame: the one its box belongs to."""
    originals = [e for e in case.evidence if e.kind == "original"]
    return originals[-1] if originals else None


def reviewed(since: datetime | None, cameras: Sequence[str]) -> list:
    """The conditions selecting the cases a run is given: reviewed, by --since and --camera."""
    conditions = [Case.review_status.in_(REVIEWED)]
    if since is not None:
        conditions.append(Case.reviewed_at >= since)
    if cameras:
        conditions.append(Case.camera.in_(cameras))
    return conditions


def reviewed_cases(db: Database, since: datetime | None, cameras: Sequence[str]) -> list[Case]:
    query = select(Case).options(selectinload(Case.evidence)).where(*reviewed(since, cameras)).order_by(Case.id)
    with db.sessions() as session:
        return list(session.scalars(query))


def cases_by_frame(db: Database, since: datetime | None, cameras: Sequence[str],
                   touched: Sequence[Case]) -> dict[str, list[Case]]:
    """Original evidence sha256 -> every reviewed case whose newest original is that frame, in
    case order, for the frames of `touched` (the cases the run was given): a frame carries the
    labels of all of its cases, whichever of them --since or --camera selected."""
    frames = {frame.sha256 for frame in filter(None, map(newest_original, touched))}
    if not frames:
        return {}
    given = select(Case.id).where(*reviewed(since, cameras))
    shas = select(Evidence.sha256).where(Evidence.kind == "original", Evidence.case_id.in_(given))
    on_them = select(Evidence.case_id).where(Evidence.kind == "original", Evidence.sha256.in_(shas))
    query = (select(Case).options(selectinload(Case.evidence))
             .where(Case.id.in_(on_them), Case.review_status.in_(REVIEWED)).order_by(Case.id))
    grouped: dict[str, list[Case]] = {}
    with db.sessions() as session:
        for case in session.scalars(query):
            frame = newest_original(case)
            if frame is not None and frame.sha256 in frames:
                grouped.setdefault(frame.sha256, []).append(case)
    return grouped


def foreign_folder(out: Path) -> str | None:
    """Why `out` must not receive an export: a folder with something in it that an earlier
    export did not write (its data.yaml, labels and manifest would be replaced: another
    dataset, a source folder). None for a new or empty folder, or an export's own."""
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out} is a file, not a dataset folder"
    if not any(out.iterdir()):
        return None
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and isinstance(manifest.get("frames"), dict):
        return None
    return (f"{out} holds files no review export wrote (no export manifest.json): exporting into it would "
            "replace its data.yaml and labels; name a new folder or an earlier export's")


def export_reviews(db: Database, evidence: EvidenceStore, detector: Detector, taxonomy: Taxonomy, out: Path, *,
                   since: datetime | None = None, cameras: Sequence[str] = ()) -> ExportReport:
    names = [detector.names[i] for i in sorted(detector.names)]
    if not_ours := foreign_folder(out):
        raise ValueError(not_ours)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"frames": {}}
    stem_of_sha = {frame["sha256"]: stem for stem, frame in manifest["frames"].items() if frame.get("cases")}
    report = ExportReport(out=str(out))
    skipped: Counter[str] = Counter()
    touched = reviewed_cases(db, since, cameras)
    if without := sum(newest_original(case) is None for case in touched):
        skipped["no frame"] += without
    for sha, on_frame in cases_by_frame(db, since, cameras, touched).items():
        cases = [case for case in on_frame if exported(case)]
        skipped.update(f"{case.review_status} {case.review_reason}".strip() for case in on_frame if not exported(case))
        if not cases:
            withdraw(out, stem_of_sha.get(sha), manifest, report)
            continue
        original = newest_original(cases[0])
        suffix = Path(original.path).suffix
        # Named by camera and content, not by case: the same whichever of its cases a run saw first.
        stem = stem_of_sha.get(sha) or f"{cases[0].camera}-{sha[:16]}"
        image_path = out / "images" / f"{stem}{suffix}"
        there = manifest["frames"].get(stem, {})
        if image_path.exists() and (there.get("cases"), there.get("reviewed_at")) == (
                [c.case_number for c in cases], reviewed_times(cases)):
            report.already_there += 1  # no decision on it since it was written
            continue
        data = evidence.resolve(original.path).read_bytes()
        image = EvidenceFrame(box=None, encoded=data).decoded()
        seen = detector.detect([image])[0]
        labels = frame_labels(cases, seen, taxonomy, names, stem, sha)
        if labels is None:
            skipped.update(f"{case.review_status} {case.review_reason}".strip() for case in cases)
            withdraw(out, stem_of_sha.get(sha), manifest, report)
            continue
        h, w = image.shape[:2]
        (out / "labels" / f"{stem}.txt").write_text(yolo_lines(labels, names, w, h))
        if image_path.exists():
            report.relabelled.append(stem)  # a new decision on a frame already there: new labels, the same image
        else:
            image_path.write_bytes(data)  # last: its presence marks the frame done
            report.written.append(stem)
        manifest["frames"][stem] = {**asdict(labels), "model_version": detector.info.version}
    for item in labelled_items(db, since, cameras):
        export_labelled(item, evidence, names, out, manifest, report, skipped)
    report.skipped = dict(skipped)
    manifest["names"] = names
    write_if_changed(manifest_path, json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True))
    report.labels_by_camera = count_labels(manifest["frames"].values())
    write_definitions(out, names, report.labels_by_camera)
    return report


def withdraw(out: Path, stem: str | None, manifest: dict, report: ExportReport) -> None:
    """Take an earlier-exported frame out: its image first (its presence marks a frame done),
    then its labels and its manifest entry."""
    if stem is None or stem not in manifest["frames"]:
        return
    for image in (out / "images").glob(f"{stem}.*"):
        image.unlink()
    (out / "labels" / f"{stem}.txt").unlink(missing_ok=True)
    del manifest["frames"][stem]
    report.withdrawn.append(stem)


def export_labelled(item: LabellingItem, evidence: EvidenceStore, names: list[str], out: Path, manifest: dict,
                    report: ExportReport, skipped: Counter[str]) -> None:
    suffix = Path(item.path).suffix
    stem = f"label-{item.camera}-{item.taken_at:%Y%m%dT%H%M%SZ}-{item.sha256[:12]}"
    if (out / "images" / f"{stem}{suffix}").exists():
        report.already_there += 1
        return
    boxes = item.boxes or []
    if any(b["class_name"] not in names for b in boxes):
        skipped["labelled, class not in the model"] += 1  # labelled for another model's classes
        return
    labels = FrameLabels(stem, "", item.camera, "labelled", human=[(b["class_name"], list(b["box"])) for b in boxes],
                         pseudo=[], negatives=[])
    data = evidence.resolve(item.path).read_bytes()
    (out / "labels" / f"{stem}.txt").write_text(yolo_lines(labels, names, item.width, item.height))
    (out / "images" / f"{stem}{suffix}").write_bytes(data)  # last: its presence marks the frame done
    # model_version: for a labelled frame, the model that was unsure about it.
    manifest["frames"][stem] = {**asdict(labels), "model_version": item.model_version,
                                "sampled_for": list(item.reasons), "labelled_by": item.labelled_by}
    report.written.append(stem)
    report.labelled += 1


def count_labels(frames) -> dict[str, dict[str, dict[str, int]]]:  # noqa: ANN001
    """camera -> label kind (human, pseudo, negative) -> class -> boxes."""
    counts: dict[str, dict[str, Counter[str]]] = {}
    for frame in frames:
        per_kind = counts.setdefault(frame["camera"], {"human": Counter(), "pseudo": Counter(), "negative": Counter()})
        for kind, key in (("human", "human"), ("pseudo", "pseudo"), ("negative", "negatives")):
            per_kind[kind].update(cls for cls, _ in frame[key])
    return {cam: {kind: dict(c) for kind, c in kinds.items()} for cam, kinds in sorted(counts.items())}


def write_if_changed(path: Path, text: str) -> None:
    """A run with nothing new leaves every file as it was, times included (rsync, backups)."""
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def write_definitions(out: Path, names: list[str], by_camera: dict) -> None:  # noqa: ANN001
    write_if_changed(out / "data.yaml", yaml.safe_dump(
        {"path": ".", "train": "images", "names": dict(enumerate(names))}, allow_unicode=True, sort_keys=False))
    cameras = ", ".join(by_camera) or "none yet"
    write_if_changed(out / "source.yaml", yaml.safe_dump({
        "name": out.name,
        "path": ".",
        "format": "yolo",
        "licence": "the city's own (its cameras' footage, reviewed by its reviewers)",
        "attribution": f"gridwatch review export; cameras: {cameras}",
        "notes": "Human labels from review decisions; other objects are pseudo-labels of the model named per "
                 "frame in manifest.json, which also lists the hard negatives (classes absent at a box). "
                 "Frames named label-* were labelled whole by a reviewer (active learning): human labels only.",
        "classes": {n: n for n in names},
    }, allow_unicode=True, sort_keys=False))
