"""Evidence: the frame a violation was best seen in, written once as three hashed files.

The pipeline (or an upload) hands an `EvidenceFrame` to `EvidenceStore.write`, which keeps
the original (the uploaded bytes unaltered, or a lossless PNG of a decoded frame), draws the
annotated copy and cuts the crop, hashes each (SHA-256) and writes it once. A file that
exists is never overwritten: its name carries its content hash, and it is published with
a hard link, which fails rather than replaces. Each item's kind is data on the returned
record; where the files sit is this module's business alone.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from detector.annotate import clip_box, draw_boxes
from detector.detections import Detections
from detector.files import sha256_file

# "masked": a copy of an original (or after photo) with people pixelated (serving/privacy.py);
# "moment", "moment_annotated": a frame of the event's life that was not its best (opened,
# latest update, closed), kept for the case's timeline strip.
EvidenceKind = Literal["original", "annotated", "crop", "after", "after_annotated", "masked", "moment",
                       "moment_annotated"]
MEDIA_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".bmp": "image/bmp"}
JPEG_QUALITY = 92
PARTIAL_PREFIX = ".incoming-"  # a file being written; renamed into place (linked) when complete
# A partial write lives for milliseconds; one this old was left by a killed process. (Younger
# ones may belong to another process writing to the same store right now.)
STALE_PARTIAL_S = 600


class EvidenceError(ValueError):
    """Evidence cannot be decoded or stored, or a path points outside the evidence directory."""


class EvidenceStorageError(OSError):
    """The evidence folder refuses writes (disk full, read-only, I/O error): nothing of the
    set was kept, and the same frame can be written again once the folder takes it."""


@dataclass(frozen=True)
class EvidenceFrame:
    """The evidence of one sighting, handed beside its event. `image` is a decoded BGR
    frame; `encoded` the original bytes as received (an upload), kept byte for byte."""

    box: tuple[float, float, float, float] | None
    label: str = ""
    image: np.ndarray | None = None
    encoded: bytes | None = None
    suffix: str = ".png"  # of `encoded`
    # Everything the model found in the frame, as it saw it: with the reviewer's decision,
    # the frame becomes a fully labelled training image. None when unknown (an upload).
    detections: Detections | None = None
    # Boxes to pixelate in every copy made from the frame (people: serving/privacy.py); the
    # original itself is kept as it came, and a masked copy of it is stored beside it.
    mask: tuple[tuple[float, float, float, float], ...] = ()
    # True: the best frame of its event so far (the case may take it as its evidence photo);
    # False: the frame of the latest sighting, kept only as a moment of the event's timeline.
    best: bool = True
    taken_at: datetime | None = None  # camera time of the frame; None: the event's last_seen

    def decoded(self) -> np.ndarray:
        if self.image is not None:
            return self.image
        image = None
        if self.encoded:
            image = cv2.imdecode(np.frombuffer(self.encoded, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise EvidenceError("evidence image cannot be decoded")
        return image


@dataclass(frozen=True)
class StoredEvidence:
    kind: EvidenceKind
    path: str  # relative to the evidence directory
    sha256: str
    size: int
    media_type: str
    masks: str = ""  # a masked copy: the SHA-256 of the original it stands in for


def _jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise EvidenceError("evidence image cannot be encoded")
    return buf.tobytes()


def _original(frame: EvidenceFrame) -> tuple[bytes, str]:
    if frame.encoded is not None:
        return frame.encoded, frame.suffix.lower()
    ok, buf = cv2.imencode(".png", frame.decoded())  # lossless: the frame as the camera gave it
    if not ok:
        raise EvidenceError("evidence frame cannot be encoded")
    return buf.tobytes(), ".png"


class EvidenceStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.writes = 0  # complete sets written: the service's sign that a full disk has room again

    def remove_stale_partials(self, now: float | None = None) -> int:
        """At start-up: delete partial writes a killed process left behind; returns how many."""
        cutoff = (time.time() if now is None else now) - STALE_PARTIAL_S
        stale = [p for p in self.root.rglob(f"{PARTIAL_PREFIX}*") if p.is_file() and p.stat().st_mtime < cutoff]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def write(self, owner: str, frame: EvidenceFrame, *, after: bool = False,
              moment: bool = False) -> list[StoredEvidence]:
        """Original, annotated copy and crop (when the box has an area) under `owner` (a
        case number, or CAMERA/EVENT_ID for `gridwatch watch`). Decodes and encodes before
        writing anything, so a bad frame leaves no half set behind; a folder that refuses a
        write (disk full) gets back what this call wrote, and EvidenceStorageError is raised.
        `after`: the frame of a re-check, kept as "after" and "after_annotated" (the case's box
        drawn where the camera looked again), no crop. `moment`: a frame of the event's timeline
        that is not its best, kept as "moment" and "moment_annotated", no crop."""
        image = frame.decoded()
        h, w = image.shape[:2]
        first, drawn = ("after", "after_annotated") if after else ("moment", "moment_annotated") if moment \
            else ("original", "annotated")
        items: list[tuple[EvidenceKind, bytes, str]] = [(first, *_original(frame))]
        if frame.mask:
            from serving.privacy import pixelate

            image = pixelate(image, frame.mask)  # every copy below is made from the masked frame
            items.append(("masked", _jpeg(image), ".jpg"))
        boxes = [frame.box] if frame.box is not None else []
        items.append((drawn, _jpeg(draw_boxes(image, boxes, [frame.label])), ".jpg"))
        if frame.box is not None and first == "original":
            x1, y1, x2, y2 = clip_box(frame.box, w, h)
            if x2 > x1 and y2 > y1:
                items.append(("crop", _jpeg(image[y1:y2, x1:x2]), ".jpg"))
        stored = self._write_set(owner, items)
        if frame.mask:
            stored[1] = replace(stored[1], masks=stored[0].sha256)
        return stored

    def write_original(self, owner: str, frame: EvidenceFrame) -> StoredEvidence:
        """The original alone (a frame for labelling: no violation box to draw or cut)."""
        return self._write_set(owner, [("original", *_original(frame))])[0]

    def _write_set(self, owner: str, items: list[tuple[EvidenceKind, bytes, str]]) -> list[StoredEvidence]:
        """All of `items` under `owner`, or none of them (EvidenceStorageError)."""
        folder = self.resolve(owner)
        created: list[Path] = []
        try:
            stored = [self._put(folder, kind, data, suffix, created) for kind, data, suffix in items]
        except OSError as exc:
            for path in created:
                path.unlink(missing_ok=True)
            self._remove_empty(folder)
            raise EvidenceStorageError(exc.errno, f"cannot write evidence to {self.root}: "
                                                  f"{exc.strerror or exc}") from exc
        self.writes += 1
        return stored

    def probe(self) -> None:
        """Write and remove a small file: EvidenceStorageError while the folder refuses writes."""
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=PARTIAL_PREFIX)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(b"\0" * 4096)
                    fh.flush()
                    os.fsync(fh.fileno())
            finally:
                os.unlink(tmp)
        except OSError as exc:
            raise EvidenceStorageError(exc.errno, f"cannot write evidence to {self.root}: "
                                                  f"{exc.strerror or exc}") from exc

    def _remove_empty(self, folder: Path) -> None:
        """The owner's folders this call may have made, if nothing is in them."""
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def _put(self, folder: Path, kind: EvidenceKind, data: bytes, suffix: str, created: list[Path]) -> StoredEvidence:
        suffix = ".jpg" if suffix == ".jpeg" else suffix if suffix in MEDIA_TYPES else ".bin"
        digest = hashlib.sha256(data).hexdigest()
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{kind}-{digest[:20]}{suffix}"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=PARTIAL_PREFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o444)
            try:
                os.link(tmp, target)  # fails if target exists: nothing is ever replaced
                created.append(target)
            except FileExistsError:
                if sha256_file(target) != digest:
                    target = folder / f"{kind}-{digest}{suffix}"
                    if not target.exists():
                        os.link(tmp, target)
                        created.append(target)
                    elif sha256_file(target) != digest:
                        raise EvidenceError(f"{target}: exists with different content") from None
        finally:
            os.unlink(tmp)
        return StoredEvidence(
            kind=kind,
            path=target.relative_to(self.root).as_posix(),
            sha256=digest,
            size=len(data),
            media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"),
        )

    def resolve(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise EvidenceError(f"{relative!r} is outside the evidence directory")
        return path
