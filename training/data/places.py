"""Which place each image shows, so that a validation split can hold out whole places.

A split by image lets one building or street sit on both sides: the model is then judged on
places it has seen, and reads higher than it will on a city's cameras (issue #28: window_ad
0.239 on such a split against 0.057 on held-out images of the same sources). A place is:

- metadata, where a source has it: a `places.json` beside the source's images
  (`{"file name": "place", ...}`, e.g. a street or building id), or a review export's
  `manifest.json` (`frames.STEM.camera`: a camera is one place);
- otherwise a perceptual-hash cluster: images within PLACE_DISTANCE of 64 phash bits, linked
  transitively. That joins views of one scene taken from nearly the same spot (shifted,
  re-encoded, re-cropped, another frame of one camera), which near-duplicate clustering at 6
  bits misses past a few bits; it cannot join two views of one building from across the
  street. A source grouped this way is reported as such: its held-out figures still may
  flatter it.

Measured on ../shared/datasets (300 images each): the median phash distance between
images with consecutive numbers is 30 bits, the same as between random pairs, so the file
numbering carries no place; each image's nearest neighbour is 16-22 bits away.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PLACE_DISTANCE = 12  # of 64 phash bits; near-duplicates are <= 6 (training/data/dataset_build.py)
PLACES_FILE = "places.json"

METADATA = "metadata"  # places.json or a review export's cameras
PHASH = "phash clusters"


@dataclass(frozen=True)
class PlacedImage:
    source: str
    image: Path
    phash: int


@dataclass(frozen=True)
class SourcePlaces:
    """How one source's images were grouped, for the build report and the card."""

    source: str
    method: str  # METADATA or PHASH
    images: int
    places: int
    shared: int  # places holding more than one image

    def line(self) -> str:
        how = ("the places.json or review-export cameras beside them (for a built dataset: the places its "
               "build found, see its report.json)" if self.method == METADATA
               else "perceptual-hash clusters only (no location metadata: a building seen from two "
                    "spots may still sit on both sides)")
        return f"{self.source}: {self.images} images in {self.places} places ({self.shared} with 2+ images), by {how}"


def metadata_places(folder: Path) -> dict[str, str] | None:
    """file stem -> place from the source folder's metadata, or None when it has none."""
    listing = folder / PLACES_FILE
    if listing.is_file():
        data = json.loads(listing.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(isinstance(v, str) and v for v in data.values()):
            raise ValueError(f"{listing}: expected {{\"file name\": \"place\", ...}} with non-empty place names")
        return {Path(k).stem: v for k, v in data.items()}
    manifest = folder / "manifest.json"
    if manifest.is_file():  # a review export (serving/review_export.py)
        try:
            frames = json.loads(manifest.read_text(encoding="utf-8")).get("frames", {})
        except (OSError, ValueError, AttributeError):
            return None
        cameras = {stem: f"camera:{f['camera']}" for stem, f in frames.items() if isinstance(f, dict) and f.get("camera")}
        return cameras or None
    return None


def phash_clusters(hashes: Sequence[int], max_distance: int = PLACE_DISTANCE) -> list[int]:
    from training.data.dataset_build import near_duplicate_clusters

    return near_duplicate_clusters(hashes, max_distance)


def place_groups(images: Sequence[PlacedImage], folders: dict[str, Path],
                 max_distance: int = PLACE_DISTANCE) -> tuple[dict[Path, str], list[SourcePlaces]]:
    """image path -> place key ("source/place"), and how each source was grouped.

    `folders`: source name -> its folder (where places.json or manifest.json would be). An image
    a source's metadata does not name gets a phash place of its own source, never another's."""
    groups: dict[Path, str] = {}
    report = []
    by_source: dict[str, list[PlacedImage]] = {}
    for im in images:
        by_source.setdefault(im.source, []).append(im)
    for source, members in sorted(by_source.items()):
        known = metadata_places(folders[source]) if source in folders else None
        named = [m for m in members if known and m.image.stem in known]
        for m in named:
            groups[m.image] = f"{source}/{known[m.image.stem]}"
        rest = [m for m in members if not (known and m.image.stem in known)]
        for m, root in zip(rest, phash_clusters([m.phash for m in rest], max_distance)):
            groups[m.image] = f"{source}/phash:{rest[root].image.stem}"  # named by one member
        sizes = Counter(groups[m.image] for m in members)
        report.append(SourcePlaces(source=source, method=METADATA if named and not rest else PHASH,
                                   images=len(members), places=len(sizes), shared=sum(n > 1 for n in sizes.values())))
    return groups, report
