"""Privacy by default: people are not the violation.

The boxes of the classes a city masks (people) that the model found in an evidence frame are
pixelated in every copy that leaves the service: the annotated image, the crop, the masked
copy that stands in for the original on the review page, in the API and in bundles. The
original is stored as it came and sealed: an admin reads it with a reason, on the audit log
(and so in the evidence chain). A city lists the violations for which a person must stay
visible (`privacy.keep_visible`); their frames are not masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from detector.detections import Detections
from serving.evidence import EvidenceFrame
from serving.settings import PrivacySettings
from serving.store.models import Case, Evidence

Box = tuple[float, float, float, float]
PIXEL_BLOCKS = 8  # a masked box is shown as at most this many blocks across its shorter side
MIN_BLOCK = 6  # pixels: a small (far) person is still a few coarse blocks, not a sharp thumbnail
MARGIN = 0.08  # of the box's size, on each side: a box drawn tight still hides the whole person


@dataclass(frozen=True)
class PrivacyPolicy:
    mask: bool = True
    classes: frozenset[str] = frozenset({"person"})
    keep_visible: frozenset[str] = frozenset()
    min_score: float = 0.25

    @classmethod
    def from_settings(cls, settings: PrivacySettings) -> PrivacyPolicy:
        return cls(settings.mask, frozenset(settings.classes), frozenset(settings.keep_visible), settings.min_score)

    def wants(self, violation: str) -> bool:
        """Whether evidence of `violation` is masked at all."""
        return self.mask and violation not in self.keep_visible

    def people(self, found: Detections) -> list[Box]:
        return [tuple(float(v) for v in box) for box, score, name in
                zip(found.xyxy, found.scores, found.class_names) if name in self.classes and score >= self.min_score]

    def boxes(self, frame: EvidenceFrame, violation: str) -> list[Box]:
        """The boxes to mask in `frame`, evidence of `violation`."""
        if not self.wants(violation) or frame.detections is None:
            return []
        return self.people(frame.detections)

    def apply(self, frame: EvidenceFrame, violation: str) -> EvidenceFrame:
        """`frame` carrying what to mask (EvidenceStore.write masks every copy made from it)."""
        boxes = self.boxes(frame, violation)
        return replace(frame, mask=tuple(boxes)) if boxes else frame


def pixelate(image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """A copy of `image` with each box (grown by MARGIN) shown as coarse blocks: nobody is
    recognisable, and the scene around them is unchanged."""
    out = image.copy()
    h, w = image.shape[:2]
    for x1, y1, x2, y2 in boxes:
        mx, my = (x2 - x1) * MARGIN, (y2 - y1) * MARGIN
        left, top = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
        right, bottom = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
        if right - left < 2 or bottom - top < 2:
            continue
        region = out[top:bottom, left:right]
        side = min(right - left, bottom - top)
        block = max(MIN_BLOCK, side // PIXEL_BLOCKS)
        small = cv2.resize(region, (max(1, (right - left) // block), max(1, (bottom - top) // block)),
                           interpolation=cv2.INTER_AREA)
        out[top:bottom, left:right] = cv2.resize(small, (right - left, bottom - top),
                                                 interpolation=cv2.INTER_NEAREST)
    return out


def sealed_originals(case: Case) -> dict[int, Evidence]:
    """Evidence id of each sealed original (or re-check photo, or timeline frame) -> its masked copy."""
    by_hash = {(e.kind, e.sha256): e for e in case.evidence}
    masked = {}
    for item in case.evidence:
        if item.kind == "masked" and item.masks:
            for kind in ("original", "after", "moment"):
                original = by_hash.get((kind, item.masks))
                if original is not None:
                    masked[original.id] = item
    return masked


def outgoing(case: Case, item: Evidence) -> Evidence:
    """What leaves for `item`: its masked copy if it is a sealed original, else itself."""
    return sealed_originals(case).get(item.id, item)


class SealedError(PermissionError):
    """A sealed original asked for by someone who may not read it (403), or without a reason (422)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


def unseal(db, case: Case, item: Evidence, principal, reason: str) -> None:  # noqa: ANN001
    """Let `principal` read `item`: anything but a sealed original passes; a sealed original
    only to an admin with a reason, recorded in the audit log (and so in the evidence chain)."""
    from serving.audit import record

    masked = sealed_originals(case).get(item.id)
    if masked is None:
        return
    if principal.role != "admin":
        raise SealedError(f"evidence {item.id} of case {case.case_number} is sealed: people in it are masked "
                          f"in evidence {masked.id}")
    if not reason.strip():
        raise SealedError(f"evidence {item.id} is a sealed original: say why you read it (?reason=...)", 422)
    with db.transaction() as session:
        record(session, principal.name, "evidence.unseal", f"case:{case.case_number}", None,
               {"evidence": item.id, "sha256": item.sha256, "reason": reason.strip()[:500]})
