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
- rejected as a duplicate or a bad image, or without a reason: not exported.

Frames labelled in the review page's labelling mode (active learning: frames the model was
unsure about) follow the case frames: the labeller drew or fixed every box of the frame,
so all of its labels are human ones and no pseudo-labels are added (a frame saved with no
box is an image with none of the model's classes in it). Skipped ones are not exported.

Deterministic and incremental: frames are named by case (or camera and time) and content
hash, taken in case (or item) order, and a frame already in DIR is never written again.
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
from serving.labelling.queue import labelled_items
from serving.store.db import Database
from serving.store.models import Case, LabellingItem

PSEUDO_SCORE = 0.5  # "above a high threshold": below it a pseudo-label teaches more noise than objects
SAME_OBJECT_IOU = 0.5
CLASS_FROM_DETECTION_IOU = 0.3
SKIPPED_REASONS = ("duplicate", "bad_image", "")  # nothing to learn that another frame does not say


@dataclass(frozen=True)
class FrameLabels:
    """One exported frame: YOLO lines and what each kind of label came from."""

    stem: str
    case_number: str  # "" for a labelled frame
    camera: str
    decision: str  # confirmed, corrected, rejected:<reason>, labelled
    human: list[tuple[str, list[float]]]
    pseudo: list[tuple[str, list[float]]]
    negatives: list[tuple[str, list[float]]]  # boxes whose class is absent there


@dataclass
class ExportReport:
    out: str
    written: list[str] = field(default_factory=list)
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


def frame_labels(case: Case, seen: Detections, taxonomy: Taxonomy, names: Sequence[str], stem: str) -> FrameLabels | None:
    decision = case.review_status if case.review_status != "rejected" else f"rejected:{case.review_reason}"
    if case.review_status == "rejected" and case.review_reason in SKIPPED_REASONS:
        return None
    boxes = case.review_boxes or ([case.box] if case.box else [])
    human: list[tuple[str, list[float]]] = []
    negatives: list[tuple[str, list[float]]] = []
    if case.review_reason == "false_alarm":
        cls = target_class(case.violation, case.box, seen, taxonomy, names) if case.box else None
        negatives = [(cls, list(case.box))] if cls else []
    else:
        for box in boxes:
            cls = target_class(case.violation, box, seen, taxonomy, names)
            if cls is not None:
                human.append((cls, [float(v) for v in box]))
    if not human and not negatives:
        return None
    pseudo = []
    for box, cls, score in zip(seen.xyxy, seen.class_names, seen.scores):
        if score < PSEUDO_SCORE:
            continue
        covered = [b for c, b in human + negatives if c == cls]
        if covered and box_iou(np.asarray([box]), np.asarray(covered, np.float32)).max() >= SAME_OBJECT_IOU:
            continue  # the reviewer's label (or absence) of this object wins
        pseudo.append((cls, [round(float(v), 1) for v in box]))
    return FrameLabels(stem, case.case_number, case.camera, decision, human, pseudo, negatives)


def yolo_lines(labels: FrameLabels, names: Sequence[str], width: int, height: int) -> str:
    lines = []
    for cls, (x1, y1, x2, y2) in labels.human + labels.pseudo:
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{names.index(cls)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return "".join(line + "\n" for line in lines)


def reviewed_cases(db: Database, since: datetime | None, cameras: Sequence[str]) -> list[Case]:
    query = (select(Case).options(selectinload(Case.evidence))
             .where(Case.review_status.in_(("confirmed", "corrected", "rejected"))).order_by(Case.id))
    if since is not None:
        query = query.where(Case.reviewed_at >= since)
    if cameras:
        query = query.where(Case.camera.in_(cameras))
    with db.sessions() as session:
        return list(session.scalars(query))


def export_reviews(db: Database, evidence: EvidenceStore, detector: Detector, taxonomy: Taxonomy, out: Path, *,
                   since: datetime | None = None, cameras: Sequence[str] = ()) -> ExportReport:
    names = [detector.names[i] for i in sorted(detector.names)]
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"frames": {}}
    report = ExportReport(out=str(out))
    skipped: Counter[str] = Counter()
    for case in reviewed_cases(db, since, cameras):
        originals = [e for e in case.evidence if e.kind == "original"]
        if not originals:
            skipped["no frame"] += 1
            continue
        original = originals[-1]  # the newest: the one the case's box belongs to
        suffix = Path(original.path).suffix
        stem = f"{case.case_number}-{original.sha256[:12]}"
        if (out / "images" / f"{stem}{suffix}").exists():
            report.already_there += 1
            continue
        data = evidence.resolve(original.path).read_bytes()
        image = EvidenceFrame(box=None, encoded=data).decoded()
        seen = detector.detect([image])[0]
        labels = frame_labels(case, seen, taxonomy, names, stem)
        if labels is None:
            skipped[f"{case.review_status} {case.review_reason}".strip()] += 1
            continue
        h, w = image.shape[:2]
        (out / "labels" / f"{stem}.txt").write_text(yolo_lines(labels, names, w, h))
        (out / "images" / f"{stem}{suffix}").write_bytes(data)  # last: its presence marks the frame done
        manifest["frames"][stem] = {**asdict(labels), "model_version": detector.info.version}
        report.written.append(stem)
    for item in labelled_items(db, since, cameras):
        export_labelled(item, evidence, names, out, manifest, report, skipped)
    report.skipped = dict(skipped)
    manifest["names"] = names
    manifest_path.write_text(json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True))
    report.labels_by_camera = count_labels(manifest["frames"].values())
    write_definitions(out, names, report.labels_by_camera)
    return report


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


def write_definitions(out: Path, names: list[str], by_camera: dict) -> None:  # noqa: ANN001
    (out / "data.yaml").write_text(yaml.safe_dump(
        {"path": ".", "train": "images", "names": dict(enumerate(names))}, allow_unicode=True, sort_keys=False))
    cameras = ", ".join(by_camera) or "none yet"
    (out / "source.yaml").write_text(yaml.safe_dump({
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
