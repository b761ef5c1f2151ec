"""Build one Ultralytics YOLO dataset from the sources: validate, merge, split, pseudo-label, synthesise.

    out/images/{train,val}/  out/labels/{train,val}/  out/data.yaml  out/manifest.json  out/report.json

Stages, each a plain function over plain values:
  read (sources) -> check (decode, clip, classes, hashes) -> dedupe (exact, then near)
  -> split (by near-duplicate cluster) -> pseudo-label -> write -> synthesise -> manifest.

The split is a pure function of the images' names: a near-duplicate cluster goes to val
iff int(sha1(min file stem in the cluster), 16) % 100 < val_fraction * 100, so a rebuild
never moves an image between train and val, and a new image can move an old one only by
being its near-duplicate (the cluster then moves together). Images given a split group
(`split_groups`: review frames by camera and day) are one cluster per group, keyed by the
group's name; when there are two or more groups and all hash to one side, the one nearest
the other side crosses, so a handful of groups still leaves something to train and to judge on.

The build writes into a staging folder beside DIR and swaps it in at the end, so a failed
or interrupted build leaves the previous one as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.files import REPO_ROOT
from training.data.dataset_manifest import (
    BuildSettings,
    DatasetManifest,
    LabelCounts,
    ManifestSource,
    CropImage,
    RealImage,
    SyntheticBox,
    SyntheticImage,
    image_counts,
    per_split,
    write_manifest,
)
from training.data.crops import DEFAULT_MAX_CROPS, native_crops
from training.data.sources import LabelledImage, Source, gridwatch_classes
from training.data.yolo_format import DataYaml, label_path, label_text, write_data_yaml

DEFAULT_OUT = REPO_ROOT / "runs" / "datasets" / "default"
NEAR_DUPLICATE_DISTANCE = 6  # of 64 phash bits; see near_duplicate_clusters
MIN_BOX_PIXELS = 2.0  # narrower or shorter than this (after clipping) is not an object
SHOWN_PROBLEMS = 50  # files named in the build's log per kind of problem; report.json names every one


class BuildError(RuntimeError):
    """The dataset cannot be built; the message says why and what to do."""


@dataclass
class BuildOptions:
    sources: Sequence[Source]
    out: Path = DEFAULT_OUT
    val_fraction: float = 0.15
    pseudo_labels: bool = True
    pseudo_score: float = 0.4
    synthetic: int = 0
    imgsz: int = 640
    limit: int | None = None  # per source, first N images by name
    seed: int = 0
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE
    teacher: Path | None = None
    cache_dir: Path | None = None
    threads: int | None = None
    crops: int = 0  # tile size for native-resolution crops of small things (0: none); training/data/crops.py
    max_crops: int = DEFAULT_MAX_CROPS
    # image path -> group name: a group never straddles the split (review frames: camera + day)
    split_groups: Mapping[Path, str] = field(default_factory=dict)
    # sources whose frames are labelled in full already (review exports carry the current
    # model's own pseudo-labels): the teacher adds nothing to them
    fully_labelled: frozenset[str] = frozenset()
    # "image": near-duplicate clusters (and split_groups) decide; "place": whole places
    # (training/data/places.py) go to one side, so val holds streets and buildings train never saw
    split_by: str = "image"
    # road-camera variants (night, infrared, overhead, burned-in text) of each truck/bus image,
    # in both splits; synthetic, so val's are reported apart from the real split
    road_views: int = 0


@dataclass
class CheckedImage:
    """An image that decoded, with boxes clipped to it and its hashes."""

    source: str
    image: Path
    stem: str  # the source file's stem: the split key
    out_name: str  # "source__file.jpg"
    size: tuple[int, int]
    boxes: np.ndarray  # (N, 4) pixels, clipped
    classes: list[str]
    sha256: str
    phash: int
    split: str = "train"
    cluster: int = -1
    pseudo_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    pseudo_classes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Everything the build found wrong or changed, by kind; printed and written to report.json."""

    images_read: Counter = field(default_factory=Counter)  # source -> n
    missing_images: list[str] = field(default_factory=list)
    unreadable_images: list[str] = field(default_factory=list)
    size_mismatch: list[str] = field(default_factory=list)
    boxes_clipped: Counter = field(default_factory=Counter)  # source -> n
    boxes_dropped_outside: Counter = field(default_factory=Counter)
    boxes_dropped_degenerate: Counter = field(default_factory=Counter)
    boxes_dropped_by_map: Counter = field(default_factory=Counter)  # mapped to null on purpose
    unknown_classes: Counter = field(default_factory=Counter)  # "source:label" -> n
    annotation_problems: list[str] = field(default_factory=list)
    # every file with a box clipped, outside or degenerate: "source: file: 1 clipped, 2 outside"
    boxes_out_of_range: list[str] = field(default_factory=list)
    exact_duplicates: list[dict] = field(default_factory=list)  # {kept, dropped, labels_agree}
    near_duplicate_clusters: list[list[str]] = field(default_factory=list)
    pseudo_suppressed: Counter = field(default_factory=Counter)  # "truck~push_cart" -> n
    crops: Counter = field(default_factory=Counter)  # source -> native-resolution crops written
    synthetic: dict = field(default_factory=dict)
    road_views: dict = field(default_factory=dict)  # split -> {images, variants, styles}
    # `split_by="place"`: how each source's images were grouped into places (training/data/places.py)
    places: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {}
        for k, v in self.__dict__.items():
            out[k] = dict(sorted(v.items())) if isinstance(v, Counter) else v
        return out

    def summary_lines(self) -> list[str]:
        lines = [f"read: {dict(self.images_read)}"]
        for label, value in [
            ("missing images", len(self.missing_images)),
            ("unreadable images", len(self.unreadable_images)),
            ("annotation size != image size (rescaled)", len(self.size_mismatch)),
            ("boxes clipped to the image", sum(self.boxes_clipped.values())),
            ("boxes dropped: outside the image", sum(self.boxes_dropped_outside.values())),
            ("boxes dropped: degenerate", sum(self.boxes_dropped_degenerate.values())),
            ("boxes dropped: class mapped to null", sum(self.boxes_dropped_by_map.values())),
            ("boxes dropped: unknown class", sum(self.unknown_classes.values())),
            ("annotation problems", len(self.annotation_problems)),
            ("exact duplicates dropped", sum(len(g["dropped"]) for g in self.exact_duplicates)),
            ("near-duplicate clusters (kept together)", len(self.near_duplicate_clusters)),
            ("pseudo boxes suppressed by a human label", sum(self.pseudo_suppressed.values())),
            ("native-resolution crops written (train)", sum(self.crops.values())),
        ]:
            lines.append(f"{label}: {value}")
        if self.unknown_classes:
            lines.append(f"unknown classes: {dict(self.unknown_classes)}")
        for name in (self.missing_images + self.unreadable_images)[:10]:
            lines.append(f"  - {name}")
        more = len(self.missing_images) + len(self.unreadable_images) - 10
        if more > 0:
            lines.append(f"  ... and {more} more (report.json lists them all)")
        # Files whose labels were changed or refused are named (all of them in report.json): the
        # trainer fixes them at the source.
        for kind, found in (("box problem", self.boxes_out_of_range), ("annotation problem", self.annotation_problems)):
            lines += [f"  {kind}: {line}" for line in found[:SHOWN_PROBLEMS]]
            if len(found) > SHOWN_PROBLEMS:
                lines.append(f"  ... and {len(found) - SHOWN_PROBLEMS} more {kind}s, each named in report.json")
        return lines


# --- check ----------------------------------------------------------------------------


def decode(path: Path):
    """(BGR array, file sha256, PIL image) or raises OSError/ValueError with the reason."""
    from PIL import Image, ImageOps

    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # a truncated or corrupt file fails here, not later in training
        im = ImageOps.exif_transpose(im).convert("RGB")
    bgr = np.ascontiguousarray(np.asarray(im)[..., ::-1])
    return bgr, hashlib.sha256(data).hexdigest(), im


def clip_boxes(boxes: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """(kept boxes, kept mask, n clipped, n outside, n degenerate) for boxes in a w x h image."""
    w, h = size
    finite = np.isfinite(boxes).all(axis=1)
    b = np.where(finite[:, None], boxes, 0.0)
    x1, x2 = np.minimum(b[:, 0], b[:, 2]), np.maximum(b[:, 0], b[:, 2])
    y1, y2 = np.minimum(b[:, 1], b[:, 3]), np.maximum(b[:, 1], b[:, 3])
    outside = finite & ((x2 <= 0) | (y2 <= 0) | (x1 >= w) | (y1 >= h))
    clipped_boxes = np.stack([x1.clip(0, w), y1.clip(0, h), x2.clip(0, w), y2.clip(0, h)], axis=1)
    changed = finite & ~outside & np.any(np.abs(clipped_boxes - np.stack([x1, y1, x2, y2], 1)) > 1e-6, axis=1)
    tiny = ((clipped_boxes[:, 2] - clipped_boxes[:, 0]) < MIN_BOX_PIXELS) | (
        (clipped_boxes[:, 3] - clipped_boxes[:, 1]) < MIN_BOX_PIXELS
    )
    degenerate = ~finite | (~outside & tiny)
    keep = ~outside & ~degenerate
    return clipped_boxes[keep], keep, int((changed & keep).sum()), int(outside.sum()), int(degenerate.sum())


def check(item: LabelledImage, report: Report) -> tuple[CheckedImage, np.ndarray] | None:
    """Decode and clean one image; None (reported) when the image is missing or unreadable."""
    import imagehash

    src = item.source
    report.images_read[src] += 1
    for problem in item.problems:
        report.annotation_problems.append(f"{src}: {item.image.name}: {problem}")
    for label in item.unknown:
        report.unknown_classes[f"{src}:{label}"] += 1
    report.boxes_dropped_by_map[src] += item.dropped
    if not item.image.is_file():
        report.missing_images.append(f"{src}: {item.image}")
        return None
    try:
        bgr, sha, pil = decode(item.image)
    except Exception as exc:  # PIL raises many types for bad files; all mean "unreadable"
        report.unreadable_images.append(f"{src}: {item.image}: {exc}")
        return None
    h, w = bgr.shape[:2]
    boxes = item.boxes.copy()
    if item.size and tuple(item.size) != (w, h) and len(boxes):
        # The annotation was made on a differently sized copy; scale its boxes to this file.
        report.size_mismatch.append(f"{src}: {item.image.name}: annotated {item.size}, file {(w, h)}")
        boxes *= [w / item.size[0], h / item.size[1]] * 2
    kept, mask, n_clipped, n_out, n_degenerate = clip_boxes(boxes, (w, h))
    report.boxes_clipped[src] += n_clipped
    report.boxes_dropped_outside[src] += n_out
    report.boxes_dropped_degenerate[src] += n_degenerate
    if n_clipped or n_out or n_degenerate:
        what = [f"{n} {kind}" for n, kind in ((n_clipped, "clipped to the image"), (n_out, "outside the image, dropped"),
                                              (n_degenerate, "degenerate, dropped")) if n]
        report.boxes_out_of_range.append(f"{src}: {item.image}: {', '.join(what)}")
    checked = CheckedImage(
        source=src,
        image=item.image,
        stem=item.image.stem,
        out_name=f"{src}__{item.image.stem}.jpg",
        size=(w, h),
        boxes=kept,
        classes=[c for c, k in zip(item.classes, mask) if k],
        sha256=sha,
        phash=int(str(imagehash.phash(pil)), 16),
    )
    return checked, bgr


# --- dedupe and split -----------------------------------------------------------------


def drop_exact_duplicates(images: list[CheckedImage], report: Report) -> list[CheckedImage]:
    """One image per group of byte-identical files: the one with the most boxes (a copy left
    unlabelled loses to its labelled twin), ties to the first by source and name."""
    groups: dict[str, list[CheckedImage]] = defaultdict(list)
    for im in sorted(images, key=lambda i: (i.source, i.stem)):
        groups[im.sha256].append(im)
    kept = []
    for group in groups.values():
        best = max(group, key=lambda i: len(i.classes))  # max keeps the first of equals
        kept.append(best)
        if len(group) > 1:
            report.exact_duplicates.append(
                {
                    "kept": f"{best.source}/{best.image.name}",
                    "dropped": [f"{i.source}/{i.image.name}" for i in group if i is not best],
                    "labels_agree": len({(tuple(sorted(i.classes)), len(i.classes)) for i in group}) == 1,
                }
            )
    return kept


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def near_duplicate_clusters(hashes: Sequence[int], max_distance: int) -> list[int]:
    """Cluster id per image: images within max_distance phash bits are linked, transitively.

    6 of 64 bits, measured on the shared sources: the pairs at 2-6 bits are the same photo
    shifted or re-encoded; the first pairs at 8 bits are different bins that share a rotated
    black border; different photos of one kind of scene mostly differ by 12 or more.
    """
    n = len(hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n:
        as_bytes = np.array([h.to_bytes(8, "big") for h in hashes], dtype="S8")
        bits = np.frombuffer(as_bytes.tobytes(), np.uint8).reshape(n, 8)
        for start in range(0, n, 512):
            block = bits[start : start + 512]
            dist = _POPCOUNT[block[:, None, :] ^ bits[None, :, :]].sum(axis=2)
            for a, b in zip(*np.nonzero(dist <= max_distance)):
                i, j = start + int(a), int(b)
                if i < j:
                    parent[find(i)] = find(j)
    return [find(i) for i in range(n)]


def _bucket(key: str) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 100


def split_of(stem: str, val_fraction: float) -> str:
    return "val" if _bucket(stem) < round(val_fraction * 100, 6) else "train"


def join_groups(roots: list[int], keys: Sequence[str | None]) -> list[int]:
    """Cluster roots with every image of one group key joined into one cluster."""
    parent = {r: r for r in roots}

    def find(r: int) -> int:
        while parent[r] != r:
            r = parent[r]
        return r

    first: dict[str, int] = {}
    for root, key in zip(roots, keys):
        if key is not None:
            parent[find(root)] = find(first.setdefault(key, root))
    return [find(r) for r in roots]


def assign_splits(images: list[CheckedImage], val_fraction: float, max_distance: int, report: Report,
                  groups: Mapping[Path, str] | None = None) -> None:
    groups = groups or {}
    near = near_duplicate_clusters([i.phash for i in images], max_distance)
    roots = join_groups(near, [groups.get(i.image) for i in images])
    members: dict[int, list[CheckedImage]] = defaultdict(list)
    for im, root in zip(images, roots):
        im.cluster = root
        members[root].append(im)
    grouped: dict[str, list[CheckedImage]] = {}
    for cluster in members.values():
        keys = [groups[i.image] for i in cluster if i.image in groups]
        key = min(keys) if keys else min(i.stem for i in cluster)
        if keys:
            grouped[key] = cluster
        for im in cluster:
            im.split = split_of(key, val_fraction)
    sides = {c[0].split for c in grouped.values()}
    if val_fraction > 0 and len(grouped) >= 2 and len(sides) == 1:
        # All groups on one side: the group whose hash is nearest the other side crosses.
        move = min(grouped, key=_bucket) if sides == {"train"} else max(grouped, key=_bucket)
        for im in grouped[move]:
            im.split = "val" if sides == {"train"} else "train"
    near_members: dict[int, list[CheckedImage]] = defaultdict(list)
    for im, root in zip(images, near):
        near_members[root].append(im)
    report.near_duplicate_clusters += [sorted(f"{i.source}/{i.image.name}" for i in cluster)
                                       for cluster in near_members.values() if len(cluster) > 1]


# --- write ----------------------------------------------------------------------------


def write_labels(image: Path, out: Path, boxes: np.ndarray, classes: Sequence[str], size: tuple[int, int],
                 ids: dict[str, int]) -> None:
    """The label file of `image` (written under out/images) in gridwatch class ids."""
    label_path(image, out / "images").write_text(label_text(boxes, [ids[c] for c in classes], size))


def write_image(bgr: np.ndarray, path: Path, imgsz: int, original: Path | None = None) -> None:
    """Copy the original when it is a JPEG no bigger than imgsz; otherwise re-encode at imgsz max side."""
    import cv2

    h, w = bgr.shape[:2]
    if original is not None and max(h, w) <= imgsz and original.suffix.lower() in (".jpg", ".jpeg"):
        shutil.copyfile(original, path)
        return
    scale = imgsz / max(h, w)
    if scale < 1:
        bgr = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise BuildError(f"cannot write {path}")


def write_crops(bgr: np.ndarray, im: CheckedImage, out: Path, options: BuildOptions, ids: dict[str, int],
                report: Report) -> list[CropImage]:
    """The image's native-resolution crops (training/data/crops.py) as extra train images."""
    import cv2

    boxes = np.vstack([im.boxes, im.pseudo_boxes])
    classes = im.classes + im.pseudo_classes
    pseudo = set(im.pseudo_classes)
    written = []
    for crop in native_crops(im.size[0], im.size[1], boxes, classes, options.crops, options.max_crops):
        t = crop.tile
        name = f"{Path(im.out_name).stem}__crop{t.x0}_{t.y0}.jpg"
        path = out / "images" / "train" / name
        if not cv2.imwrite(str(path), bgr[t.y0:t.y1, t.x0:t.x1], [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise BuildError(f"cannot write {path}")
        write_labels(path, out, crop.boxes, crop.classes, (t.x1 - t.x0, t.y1 - t.y0), ids)
        report.crops[im.source] += 1
        written.append(CropImage(
            file=f"train/{name}", source=im.source, crop_of=f"train/{im.out_name}", window=[t.x0, t.y0, t.x1, t.y1],
            boxes=len(crop.classes), pseudo_labelled_classes=sorted(pseudo & set(crop.classes)),
            pseudo_boxes=sum(c in pseudo for c in crop.classes),
        ))
    return written


def check_out(final: Path) -> None:
    """Refuse, before any work, to replace a folder that is not a previous build."""
    if final.exists() and (not final.is_dir() or (any(final.iterdir()) and not (final / "manifest.json").exists())):
        raise BuildError(f"{final} exists, is not empty and holds no manifest.json: not overwriting it")


def staging_dir(final: Path) -> Path:
    """Build beside the target and swap at the end: a failed build leaves the last good one."""
    staging = final.parent / f".{final.name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    for split in ("train", "val"):
        (staging / "images" / split).mkdir(parents=True, exist_ok=True)
        (staging / "labels" / split).mkdir(parents=True, exist_ok=True)
    return staging


def publish(staging: Path, final: Path) -> None:
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def dataset_hash(out: Path) -> str:
    """sha256 over every label file's name and content and every image's sha256, in name order."""
    digest = hashlib.sha256()
    for split in ("train", "val"):
        for image in sorted((out / "images" / split).iterdir()):
            label = label_path(image, out / "images")
            digest.update(f"{split}/{image.name}\n".encode())
            digest.update(hashlib.sha256(image.read_bytes()).digest())
            digest.update(label.read_bytes() if label.exists() else b"")
    return digest.hexdigest()


# --- the build ------------------------------------------------------------------------


def build(options: BuildOptions, log: Callable[[str], None] = print) -> DatasetManifest:
    if not options.sources:
        raise BuildError("no sources to build from")
    if not 0 <= options.val_fraction < 1:
        raise BuildError(f"--val-fraction must be in [0, 1), got {options.val_fraction}")
    if options.split_by not in ("image", "place"):
        raise BuildError(f"--split-by must be image or place, got {options.split_by!r}")
    classes = list(gridwatch_classes())
    ids = {c: i for i, c in enumerate(classes)}
    final = Path(options.out).resolve()
    check_out(final)
    started = time.monotonic()
    report = Report()

    teacher = None
    if options.pseudo_labels:
        from training.data.pseudo_labels import COCO_TEACHER, DEFAULT_CACHE, SECOND_TEACHER, Teacher

        teacher = Teacher(options.teacher or COCO_TEACHER, options.cache_dir or DEFAULT_CACHE, options.threads,
                          second=None if options.teacher else SECOND_TEACHER)
    fonts = None
    if options.synthetic:
        from training.data.synthetic import load_fonts

        fonts = load_fonts()  # fail before an hour of work, not after

    # read + check: keep decoded pixels only as long as needed (written straight after the split).
    checked: list[CheckedImage] = []
    for source in options.sources:
        if not source.path.exists():
            raise BuildError(f"source {source.name}: {source.path} does not exist")
        items = source.samples()
        if options.limit:
            items = sorted(items, key=lambda s: s.image.name)[: options.limit]
        log(f"{source.name}: {len(items)} images ({source.format}, {source.path})")
        before = len(checked)
        for item in items:
            result = check(item, report)
            if result is not None:
                checked.append(result[0])
        if len(checked) == before:
            # A source that gives nothing is a wrong path or layout, never an empty success.
            bad = [m for m in report.missing_images + report.unreadable_images if m.startswith(f"{source.name}: ")]
            raise BuildError(f"source {source.name}: none of its {len(items)} images could be used "
                             f"({len(bad)} missing or unreadable{'; first: ' + bad[0] if bad else ''})")
    images = drop_exact_duplicates(checked, report)
    groups = options.split_groups
    if options.split_by == "place":
        from training.data.places import PlacedImage, place_groups

        try:
            places, grouped = place_groups([PlacedImage(i.source, i.image, i.phash) for i in images],
                                           {s.name: s.path for s in options.sources})
        except ValueError as exc:
            raise BuildError(str(exc)) from None
        groups = {**options.split_groups, **places}
        report.places = [g.line() for g in grouped]
        for line in report.places:
            log(f"places: {line}")
    assign_splits(images, options.val_fraction, options.near_duplicate_distance, report, groups)
    log(f"checked {len(checked)} images in {time.monotonic() - started:.0f} s; {len(images)} after exact dedupe")

    out = staging_dir(final)
    manifest_images: list[RealImage | CropImage | SyntheticImage] = []
    counts = {"train": Counter(), "val": Counter()}
    pseudo_counts = {"train": Counter(), "val": Counter()}
    for n, im in enumerate(sorted(images, key=lambda i: i.out_name), 1):
        bgr, _, _ = decode(im.image)
        if teacher is not None and im.source not in options.fully_labelled:
            pseudo = teacher.label(im.sha256, bgr, im.boxes, im.classes, options.pseudo_score)
            im.pseudo_boxes, im.pseudo_classes = pseudo.boxes, pseudo.classes
            report.pseudo_suppressed.update(pseudo.suppressed)
        image = out / "images" / im.split / im.out_name
        write_image(bgr, image, options.imgsz, im.image)
        all_classes = im.classes + im.pseudo_classes
        write_labels(image, out, np.vstack([im.boxes, im.pseudo_boxes]), all_classes, im.size, ids)
        counts[im.split].update(im.classes)
        pseudo_counts[im.split].update(im.pseudo_classes)
        if options.crops and im.split == "train":
            manifest_images += write_crops(bgr, im, out, options, ids, report)
        manifest_images.append(
            RealImage(
                file=f"{im.split}/{im.out_name}",
                source=im.source,
                original=str(im.image),
                split=im.split,
                sha256=im.sha256,
                phash=f"{im.phash:016x}",
                cluster=im.cluster,
                boxes=len(all_classes),
                pseudo_labelled_classes=sorted(set(im.pseudo_classes)),
                pseudo_boxes=len(im.pseudo_classes),
            )
        )
        if n % 250 == 0:
            log(f"  wrote {n}/{len(images)} images ({time.monotonic() - started:.0f} s)")

    synthetic_counts = {"train": Counter(), "val": Counter()}
    if options.synthetic:
        manifest_images += synthesise(options, images, out, ids, fonts, synthetic_counts, report, log)
    if options.road_views:
        manifest_images += add_road_views(options, images, out, ids, synthetic_counts, report, log)

    digest = dataset_hash(out)
    write_data_yaml(DataYaml(
        file=out / "data.yaml", root=final, names=dict(enumerate(classes)),
        splits={"train": "images/train", "val": "images/val"},
        sources=[s.name for s in options.sources], dataset_hash=digest,
    ))
    manifest = DatasetManifest(
        classes=classes,
        sources=[
            ManifestSource(name=s.name, format=s.format, licence=s.licence, attribution=s.attribution, url=s.url)
            for s in options.sources
        ],
        options=BuildSettings(
            val_fraction=options.val_fraction,
            pseudo_labels=options.pseudo_labels,
            pseudo_score=options.pseudo_score if options.pseudo_labels else None,
            teacher=str(teacher.model) if teacher else None,
            synthetic=options.synthetic,
            imgsz=options.imgsz,
            limit=options.limit,
            seed=options.seed,
            near_duplicate_distance=options.near_duplicate_distance,
            crops=options.crops,
            max_crops=options.max_crops if options.crops else 0,
            road_views=options.road_views,
        ),
        counts=LabelCounts(
            human=per_split(counts, classes),
            pseudo=per_split(pseudo_counts, classes),
            synthetic=per_split(synthetic_counts, classes),
            images=image_counts(manifest_images),
        ),
        dataset_hash=digest,
        images=manifest_images,
    )
    write_manifest(manifest, out / "manifest.json")
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=1, ensure_ascii=False))
    if options.split_by == "place":
        # The places travel with the build: `gridwatch eval --place-folds` and the card's
        # held-out-by-place figures deal the same places into folds (training/data/places.py).
        from training.data.places import PLACES_FILE

        places = {im.out_name: groups[im.image] for im in images if im.image in groups}
        (out / PLACES_FILE).write_text(json.dumps(dict(sorted(places.items())), indent=0, ensure_ascii=False))
    publish(out, final)
    for line in report.summary_lines():
        log(line)
    log(format_counts(manifest.counts, classes))
    if teacher is not None:
        log(f"teacher cache: {teacher.hits} hits, {teacher.misses} runs, {teacher.vehicle_looks} vehicle second "
            f"looks ({teacher.cache_dir})")
    log(f"dataset hash {manifest.dataset_hash}; built in {time.monotonic() - started:.0f} s -> {final}/data.yaml")
    return manifest


def format_counts(counts: LabelCounts, classes: list[str]) -> str:
    rows = [f"{'class':<14}{'train':>7}{'val':>7}{'pseudo tr':>11}{'pseudo val':>11}{'synth tr':>10}{'synth val':>10}"]
    for c in classes:
        cells = [per_split[s].get(c, 0) for per_split in (counts.human, counts.pseudo, counts.synthetic)
                 for s in ("train", "val")]
        if any(cells):
            rows.append(f"{c:<14}" + "".join(f"{v:>{w}}" for v, w in zip(cells, (7, 7, 11, 11, 10, 10))))
    train, val = counts.images["train"], counts.images["val"]
    rows.append(
        f"images: train {train.real} real + {train.synthetic} synthetic, "
        f"val {val.real} real + {val.synthetic} synthetic (synthetic val is reported separately)"
    )
    return "\n".join(rows)


def synthesise(
    options: BuildOptions,
    images: list[CheckedImage],
    out: Path,
    ids: dict[str, int],
    fonts: dict,
    counts: dict[str, Counter],
    report: Report,
    log: Callable[[str], None],
) -> list[SyntheticImage]:
    """N synthetic images, split like their backgrounds: val gets its share (val_fraction) from val backgrounds."""
    from training.data.synthetic import compose

    rng = np.random.default_rng(options.seed)
    # Facades and garbage scenes have walls, fences and poles in view; thela roads mostly sky and traffic.
    pool = {s: [i for i in images if i.split == s and i.source != "thela_india"] for s in ("train", "val")}
    for s in pool:
        pool[s] = pool[s] or [i for i in images if i.split == s]
    n_val = round(options.synthetic * options.val_fraction) if pool["val"] else 0
    wanted = {"train": options.synthetic - n_val, "val": n_val}
    entries, failures = [], 0
    for split, n in wanted.items():
        made = 0
        while made < n and pool[split] and failures < 10 * max(n, 1):
            bg = pool[split][int(rng.integers(len(pool[split])))]
            bgr, _, _ = decode(bg.image)
            occupied = np.vstack([bg.boxes, bg.pseudo_boxes])
            image, ads = compose(bgr, occupied, rng, fonts)
            if not ads:
                failures += 1
                continue
            made += 1
            if made % 100 == 0:
                log(f"  synthetic {split}: {made}/{n}")
            name = f"synthetic__{split}_{made:05d}__{bg.source}__{bg.stem}.jpg"
            synthetic_image = out / "images" / split / name
            write_image(image, synthetic_image, options.imgsz)
            ad_boxes = np.array([a.box for a in ads], np.float64)
            classes = bg.classes + bg.pseudo_classes + [a.kind for a in ads]
            write_labels(synthetic_image, out, np.vstack([bg.boxes, bg.pseudo_boxes, ad_boxes]), classes, bg.size, ids)
            counts[split].update(a.kind for a in ads)
            entries.append(
                SyntheticImage(
                    file=f"{split}/{name}",
                    background=f"{bg.source}/{bg.image.name}",
                    split=split,
                    boxes=len(classes),
                    synthetic_boxes=[
                        SyntheticBox(kind=a.kind, box=[round(v, 2) for v in a.box], occluded=round(a.occluded, 3))
                        for a in ads
                    ],
                    pseudo_labelled_classes=sorted(set(bg.pseudo_classes)),
                    pseudo_boxes=len(bg.pseudo_classes),
                )
            )
        if made < n:
            log(f"synthetic {split}: made {made} of {n} (no room found on the backgrounds tried)")
    report.synthetic = {
        "requested": options.synthetic,
        "made": {s: sum(1 for e in entries if e.split == s) for s in ("train", "val")},
        "failed_backgrounds": failures,
    }
    log(f"synthetic: {report.synthetic['made']}")
    return entries


def add_road_views(
    options: BuildOptions,
    images: list[CheckedImage],
    out: Path,
    ids: dict[str, int],
    counts: dict[str, Counter],
    report: Report,
    log: Callable[[str], None],
) -> list[SyntheticImage]:
    """`options.road_views` road-camera variants of every image holding a truck or bus."""
    from training.data.road_views import has_road_vehicle, render

    rng = np.random.default_rng(options.seed + 1)
    entries: list[SyntheticImage] = []
    styles: dict[str, Counter] = {"train": Counter(), "val": Counter()}
    for im in images:
        classes = im.classes + im.pseudo_classes
        if not has_road_vehicle(classes):
            continue
        bgr, _, _ = decode(im.image)
        boxes = np.vstack([im.boxes, im.pseudo_boxes])
        for k in range(options.road_views):
            view = render(bgr, boxes, rng)
            kept = [c for c, keep in zip(classes, view.keep) if keep]
            name = f"synthetic__roadview_{im.split}_{k}__{im.source}__{im.stem}.jpg"
            path = out / "images" / im.split / name
            write_image(view.image, path, options.imgsz)
            write_labels(path, out, view.boxes, kept, (view.image.shape[1], view.image.shape[0]), ids)
            counts[im.split].update(kept)
            styles[im.split].update(view.styles)
            entries.append(SyntheticImage(
                file=f"{im.split}/{name}", background=f"{im.source}/{im.image.name}", split=im.split,
                boxes=len(kept), synthetic_boxes=[],
                pseudo_labelled_classes=sorted(set(im.pseudo_classes)), pseudo_boxes=len(im.pseudo_classes),
            ))
    report.road_views = {
        s: {"images": sum(1 for e in entries if e.split == s), "styles": dict(styles[s])} for s in ("train", "val")
    }
    log(f"road views: {report.road_views}")
    return entries
