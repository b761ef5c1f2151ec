"""What every stage agrees on about files: which suffixes are images, how a file is hashed,
and where the shared data beside the repository lives. Defined once, here, because
`detector` is the one package both `serving` and `training` import."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import ValidationError

# OpenCV decodes all of these; folders of frames, datasets and `gridwatch detect` use the same list.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real datasets and pretrained models are read in place from ../shared, never copied in.
SHARED_DIR = REPO_ROOT.parent / "shared"


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validation_problems(exc: ValidationError, where=None) -> str:  # noqa: ANN001
    """A pydantic error as one readable line: `where(loc)` names the place (default: the
    dotted field path), followed by the message."""
    errors = exc.errors()
    locs = [tuple(err["loc"]) for err in errors]
    parts = []
    for err, loc in zip(errors, locs):
        if err["type"] == "too_short" and any(other[:len(loc)] == loc and other != loc for other in locs):
            continue  # a list's length counted without its items that failed, which are named
        parts.append(f"{where(loc) if where else '.'.join(map(str, loc))}: {err['msg']}")
    return "; ".join(parts)
