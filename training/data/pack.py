"""`gridwatch dataset pack`: a built dataset made small enough to carry to a training machine.

A GPU machine lent for minutes gets the checkout and a few tens of MiB beside it, not the
sources (issue #16, item 6). Training at 416 px never reads more than 416 pixels a side, so
each image is re-encoded at the training size as WebP: the full build (4,534 images, 320 MiB)
packs into about 79 MiB at quality 75. YOLO labels are normalised to the image, so they carry
over unchanged. The manifest follows the new file names, so repeat-factor sampling and the
labelled-class fitness read the pack as they read the build.

`parts` deals the train images of each source round-robin over that many folders, so no part
is over a carry limit; part 1 also holds val, every label, the manifest and data.yaml, and
trains alone on its share. Copying every part's images into part 1 gives the whole pack.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from training.data.dataset_manifest import CropImage, DatasetManifest, write_manifest
from training.data.yolo_format import find_images, label_path, read_data_yaml, write_data_yaml

SPLITS = ("train", "val")
SUFFIX = ".webp"


class PackError(ValueError):
    """The dataset cannot be packed; the message names the file or option."""


@dataclass(frozen=True)
class PackReport:
    out: Path
    images: int
    bytes_in: int
    part_bytes: list[int]  # what each part's images weigh, part 1 first


def packed_file(file: str) -> str:
    """A manifest's "split/name" under its packed name."""
    return str(Path(file).with_suffix(SUFFIX))


def part_folder(out: Path, part: int) -> Path:
    return out / f"part-{part}"


def _source(image: Path) -> str:
    # a build names each image `source__file` (training/data/dataset_build.py)
    return image.name.split("__", 1)[0]


def deal(images: list[Path], parts: int) -> dict[Path, int]:
    """Part (1-based) of each train image: round-robin within each source, so every part
    holds every source in proportion."""
    by_source: dict[str, list[Path]] = defaultdict(list)
    for image in images:
        by_source[_source(image)].append(image)
    return {image: i % parts + 1 for group in by_source.values() for i, image in enumerate(group)}


def _encode(image: Path, imgsz: int, quality: int) -> bytes:
    import cv2

    pixels = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if pixels is None:
        raise PackError(f"{image}: not a readable image")
    h, w = pixels.shape[:2]
    scale = imgsz / max(h, w)
    if scale < 1:  # INTER_AREA: the shrink training's own letterbox would do, without its aliasing
        pixels = cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(SUFFIX, pixels, [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise PackError(f"{image}: WebP encoding failed")
    return encoded.tobytes()


def _packed_manifest(path: Path) -> DatasetManifest | None:
    if not path.is_file():
        return None
    manifest = DatasetManifest.model_validate_json(path.read_text(encoding="utf-8"))
    images = [m.model_copy(update={"file": packed_file(m.file),
                                   **({"crop_of": packed_file(m.crop_of)} if isinstance(m, CropImage) else {})})
              for m in manifest.images]
    return manifest.model_copy(update={"images": images})


def pack(data_file: Path, out: Path, *, imgsz: int = 416, quality: int = 75, parts: int = 1,
         log: Callable[[str], None] = print) -> PackReport:
    if imgsz < 32:
        raise PackError(f"--imgsz {imgsz}: too small to train at")
    if not 1 <= quality <= 100:
        raise PackError(f"--quality {quality}: WebP quality runs from 1 to 100")
    if parts < 1:
        raise PackError(f"--parts {parts}: at least 1")
    data = read_data_yaml(data_file)
    folders = {s: data.split_dir(s) for s in SPLITS}
    missing = [s for s, folder in folders.items() if folder is None or not folder.is_dir()]
    if missing:
        raise PackError(f"{data_file}: no {' or '.join(missing)} folder")
    if out.exists() and any(out.iterdir()):
        raise PackError(f"{out} is not empty; pack into a new folder")

    images = {s: find_images(folders[s]) for s in SPLITS}
    part_of = deal(images["train"], parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside `out` and renamed at the end: a bad image leaves no half pack behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        first = part_folder(staging, 1)
        part_bytes = [0] * parts
        bytes_in = 0
        for split in SPLITS:
            for n, image in enumerate(images[split], 1):
                part = part_of.get(image, 1)
                target = part_folder(staging, part) / "images" / split / Path(image.name).with_suffix(SUFFIX)
                target.parent.mkdir(parents=True, exist_ok=True)
                encoded = _encode(image, imgsz, quality)
                target.write_bytes(encoded)
                part_bytes[part - 1] += len(encoded)
                bytes_in += image.stat().st_size
                labels = label_path(image, folders[split])
                if labels.is_file():
                    copy = first / "labels" / split / f"{image.stem}.txt"
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(labels, copy)
                if n % 500 == 0:
                    log(f"  {split}: {n}/{len(images[split])}")
        manifest = _packed_manifest(data.file.parent / "manifest.json")
        if manifest is not None:
            write_manifest(manifest, first / "manifest.json")
        write_data_yaml(replace(data, file=first / "data.yaml", root=first), portable=True)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report = PackReport(out=out, images=sum(len(v) for v in images.values()), bytes_in=bytes_in, part_bytes=part_bytes)
    mib = lambda n: n / 2**20  # noqa: E731
    log(f"packed {report.images} images at {imgsz} px, WebP {quality}: {mib(bytes_in):.1f} MiB -> "
        f"{mib(sum(part_bytes)):.1f} MiB in {out}")
    for i, size in enumerate(part_bytes, 1):
        log(f"  {part_folder(out, i).name}: {mib(size):.1f} MiB of images")
    return report
