"""Evidence files: originals kept byte-for-byte, an annotated copy and a crop derived from
them, each hashed (SHA-256) and written once. A file that exists is never overwritten: a
name carries its content hash, and files are published with a hard link, which fails
rather than replaces."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

KINDS = ("original", "annotated", "crop")
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


class EvidenceError(ValueError):
    """An evidence file is missing, unreadable or outside the evidence directory."""


@dataclass(frozen=True)
class StoredEvidence:
    kind: str
    path: str  # relative to the evidence directory
    sha256: str
    size: int
    media_type: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def classify(paths: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Which event evidence path is which: by name where it says, else the first is the original."""
    kinds: dict[str, str] = {}
    for path in paths:
        name = Path(path).name.lower()
        kind = "crop" if "crop" in name else "annotated" if "annot" in name else "original"
        kinds.setdefault(kind, path)
    return kinds


def annotate(image_bytes: bytes, box: tuple[float, float, float, float] | None, label: str = "") -> tuple[bytes, bytes | None]:
    """An annotated JPEG copy (box drawn) and a JPEG crop of the box, from the original bytes."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise EvidenceError("evidence image cannot be decoded")
    crop = None
    annotated = image.copy()
    if box is not None:
        h, w = image.shape[:2]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        x1, x2 = sorted((max(0, min(w - 1, x1)), max(0, min(w, x2))))
        y1, y2 = sorted((max(0, min(h - 1, y1)), max(0, min(h, y2))))
        thickness = max(2, round(max(h, w) / 400))
        cv2.rectangle(annotated, (x1, y1), (x2, y2), (0, 0, 255), thickness)
        if label:
            cv2.putText(annotated, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                        max(0.5, thickness / 3), (0, 0, 255), thickness)
        if x2 > x1 and y2 > y1:
            ok, buf = cv2.imencode(".jpg", image[y1:y2, x1:x2], [cv2.IMWRITE_JPEG_QUALITY, 92])
            crop = buf.tobytes() if ok else None
    ok, buf = cv2.imencode(".jpg", annotated, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise EvidenceError("annotated copy cannot be encoded")
    return buf.tobytes(), crop


class EvidenceStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def put_bytes(self, case_number: str, kind: str, data: bytes, suffix: str = ".jpg") -> StoredEvidence:
        if kind not in KINDS:
            raise EvidenceError(f"unknown evidence kind {kind!r}")
        suffix = suffix.lower() if suffix.lower() in MEDIA_TYPES else ".bin"
        digest = hashlib.sha256(data).hexdigest()
        folder = self.root / case_number
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{kind}-{digest[:20]}{suffix}"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o444)
            try:
                os.link(tmp, target)  # fails if target exists: nothing is ever replaced
            except FileExistsError:
                if sha256_file(target) != digest:
                    target = folder / f"{kind}-{digest}{suffix}"
                    if not target.exists():
                        os.link(tmp, target)
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

    def put_file(self, case_number: str, kind: str, source: str | Path) -> StoredEvidence:
        source = Path(source)
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise EvidenceError(f"{source}: cannot read evidence: {exc.strerror}") from exc
        return self.put_bytes(case_number, kind, data, source.suffix)

    def put_event_evidence(
        self,
        case_number: str,
        paths: tuple[str, ...] | list[str],
        box: tuple[float, float, float, float] | None,
        label: str = "",
    ) -> list[StoredEvidence]:
        """Store what an event brought; derive the annotated copy and crop when it brought
        only the original frame."""
        by_kind = classify(paths)
        stored = [self.put_file(case_number, kind, path) for kind, path in by_kind.items()]
        original = next((s for s in stored if s.kind == "original"), None)
        if original is not None and ("annotated" not in by_kind or "crop" not in by_kind):
            annotated, crop = annotate(self.resolve(original.path).read_bytes(), box, label)
            if "annotated" not in by_kind:
                stored.append(self.put_bytes(case_number, "annotated", annotated))
            if crop is not None and "crop" not in by_kind:
                stored.append(self.put_bytes(case_number, "crop", crop))
        return stored

    def resolve(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise EvidenceError(f"{relative!r} is outside the evidence directory")
        return path
