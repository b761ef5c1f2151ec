"""A review export read as labelled crops: what each reviewed box says about its object.

`gridwatch review export` writes, per frame, the reviewers' boxes (`human`), the false alarms'
boxes (`negatives`) and the decisions of the frame's cases (`decisions`, in case order), but not
which box belongs to which case. So a human box is read as "confirmed" only when every case on
its frame was confirmed or corrected, and as "rejected (not a violation here)" only when every
case was; a frame with mixed decisions gives its human boxes to no side (counted as skipped). A
negative box is always a false alarm.

For the truck load decision: a confirmed truck case is an `open` load; a truck rejected as "not
a violation here" is a `covered` one (the reviewer said the load is covered, not how); a truck
rejected as a false alarm is no truck and teaches the load nothing. Where the reviewer said what
the load was (the review page's load key; the export's `loads`, [load, box] per truck box), that
label wins over this inference for the same box. Frames labelled whole in the
labelling mode carry truck boxes without a load: a `load labels` file (JSON, stem -> one label
per truck box of that frame, in the export's order) gives them theirs (open, mesh, tarp,
covered, cannot_tell).
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from detector.boxes import pair_iou
from detector.files import IMAGE_SUFFIXES
from detector.second_stage import COVERED, LOAD_LABELS, OPEN

CONFIRMED, REJECTED = "confirmed", "rejected"
LOAD_CLASS = "truck"
KNOWN_LOADS = (*LOAD_LABELS, COVERED)
SAME_BOX_IOU = 0.5  # a reviewer's load box and a human box this alike are the same truck


class ExportError(ValueError):
    """A review export or load-labels file that cannot be read; the message says which and why."""


@dataclass(frozen=True)
class CropExample:
    """One reviewed object: the frame it is in, its box (xyxy pixels), and what was decided."""

    image: Path
    box: tuple[float, float, float, float]
    cls: str  # the detector class
    label: str  # confirmed / rejected (a filter), or a load (open, covered, ...)
    stem: str  # the frame: held-out splits keep a frame's objects together
    camera: str
    reason: str = ""  # rejected: false_alarm or not_here; a load the reviewer said: "reviewer"


@dataclass
class ReadReport:
    frames: int = 0
    skipped: Counter = field(default_factory=Counter)


def _frame_image(folder: Path, stem: str) -> Path | None:
    for path in (folder / "images").glob(f"{stem}.*"):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return path
    return None


def _manifest(export: Path) -> dict:
    path = export / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{export}: not a review export (gridwatch review export): {exc}") from None
    if not isinstance(manifest.get("frames"), dict):
        raise ExportError(f"{path}: no 'frames' mapping")
    return manifest


def reviewed_objects(export: Path, report: ReadReport | None = None) -> list[CropExample]:
    """Every reviewed object of a case frame as confirmed or rejected (see the module's note)."""
    report = report if report is not None else ReadReport()
    out: list[CropExample] = []
    for stem, frame in sorted(_manifest(export)["frames"].items()):
        if frame.get("decision") != "cases":
            continue
        image = _frame_image(export, stem)
        if image is None:
            report.skipped["image missing"] += 1
            continue
        report.frames += 1
        camera = frame.get("camera", "")
        decisions = frame.get("decisions") or []
        kinds = {"kept" if d in ("confirmed", "corrected") else d for d in decisions}
        for cls, box in frame.get("negatives", []):
            out.append(CropExample(image, tuple(box), cls, REJECTED, stem, camera, "false_alarm"))
        human = frame.get("human", [])
        if not human:
            continue
        if kinds == {"kept"}:
            out += [CropExample(image, tuple(box), cls, CONFIRMED, stem, camera) for cls, box in human]
        elif kinds == {"rejected:not_here"}:
            out += [CropExample(image, tuple(box), cls, REJECTED, stem, camera, "not_here") for cls, box in human]
        else:
            report.skipped["mixed decisions on one frame"] += len(human)
    return out


def load_examples(exports: list[Path], load_labels: dict[str, list[str]] | None = None,
                  report: ReadReport | None = None) -> list[CropExample]:
    """Truck crops with their load, from reviewed truck cases and labelled frames."""
    report = report if report is not None else ReadReport()
    load_labels = dict(load_labels or {})
    out: list[CropExample] = []
    for export in exports:
        said = reviewer_loads(export, report)
        out += said
        for ex in reviewed_objects(export, report):
            if ex.cls != LOAD_CLASS:
                continue
            if any(s.stem == ex.stem and pair_iou(s.box, ex.box) >= SAME_BOX_IOU for s in said):
                continue  # the reviewer said this truck's load: no inference from the decision
            if ex.label == CONFIRMED:
                out.append(_as_load(ex, OPEN))
            elif ex.reason == "not_here":
                out.append(_as_load(ex, COVERED))
            else:
                report.skipped["truck false alarm (no truck, no load)"] += 1
        for stem, frame in sorted(_manifest(export)["frames"].items()):
            if frame.get("decision") != "labelled":
                continue
            trucks = [box for cls, box in frame.get("human", []) if cls == LOAD_CLASS]
            if not trucks:
                continue
            loads = load_labels.pop(stem, None)
            if loads is None:
                report.skipped["labelled truck without a load label"] += len(trucks)
                continue
            if len(loads) != len(trucks):
                raise ExportError(f"load labels for {stem}: {len(loads)} labels for {len(trucks)} truck boxes")
            image = _frame_image(export, stem)
            if image is None:
                report.skipped["image missing"] += len(trucks)
                continue
            out += [CropExample(image, tuple(box), LOAD_CLASS, load, stem, frame.get("camera", ""))
                    for box, load in zip(trucks, loads)]
    if load_labels:
        raise ExportError(f"load labels for frames no export has as labelled trucks: {sorted(load_labels)[:5]}")
    return out


def reviewer_loads(export: Path, report: ReadReport | None = None) -> list[CropExample]:
    """Truck boxes whose reviewer said the load (a case frame's `loads`), with that load."""
    report = report if report is not None else ReadReport()
    out: list[CropExample] = []
    for stem, frame in sorted(_manifest(export)["frames"].items()):
        loads = frame.get("loads") or []
        if frame.get("decision") != "cases" or not loads:
            continue
        image = _frame_image(export, stem)
        if image is None:
            continue  # counted once by reviewed_objects
        for load, box in loads:
            if load not in KNOWN_LOADS:
                report.skipped[f"unknown reviewer load {load!r}"] += 1
                continue
            out.append(CropExample(image, tuple(box), LOAD_CLASS, load, stem, frame.get("camera", ""), "reviewer"))
    return out


def _as_load(ex: CropExample, load: str) -> CropExample:
    return CropExample(ex.image, ex.box, ex.cls, load, ex.stem, ex.camera, ex.reason)


def read_load_labels(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: cannot read load labels: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ExportError(f"{path}: expected {{frame stem: [load per truck box]}}")
    for stem, loads in data.items():
        unknown = [x for x in loads if x not in KNOWN_LOADS]
        if unknown:
            raise ExportError(f"{path}: {stem}: unknown load {unknown[0]!r} (one of {', '.join(KNOWN_LOADS)})")
    return data


def held_out_split(examples: list[CropExample], fraction: float) -> tuple[list[CropExample], list[CropExample]]:
    """(train, held out): whole frames (a frame's objects stay on one side), about `fraction`
    of each label's frames held out and at least one where the label has two frames or more.
    Frames are ranked by a hash of their name, so one export splits the same on every run."""
    if not 0 < fraction < 1:
        raise ValueError("the held-out fraction must be between 0 and 1")
    frames_of: dict[str, set[str]] = {}
    for ex in examples:
        frames_of.setdefault(ex.label, set()).add(ex.stem)
    held: set[str] = set()
    for label, stems in sorted(frames_of.items()):
        ranked = sorted(stems, key=lambda s: zlib.crc32(s.encode()))
        want = max(1, round(len(ranked) * fraction)) if len(ranked) >= 2 else 0
        for stem in ranked:
            if sum(1 for s in ranked if s in held) >= want:
                break
            held.add(stem)
    return [ex for ex in examples if ex.stem not in held], [ex for ex in examples if ex.stem in held]
