"""Repeat-factor sampling inside training: rare classes and small sources seen as often as they need.

The merged dataset holds 2,679 garbage images, 439 facades and 172 push-cart photos; drawn
uniformly, the 176 push-cart boxes are a rounding error in every epoch, and the merged model
ends below a model trained on the push carts alone. LVIS's repeat-factor sampling (Gupta et
al., 2019, section 3) fixes that without copying a file: an image is drawn

    r(image) = max over its categories c of max(1, sqrt(t / f(c)))

times per epoch, where f(c) is the fraction of train images holding category c and t the
threshold below which a category counts as rare. Categories here are the human-labelled
classes of the image and its source, so a small source is balanced even in images where its
class is absent (a facade with no window ad still teaches shop signs). Pseudo-labelled context
classes (people, cars from the COCO teacher) are not categories: they are everywhere, and
balancing them would only repeat the garbage images.

Fractional factors are rounded stochastically once, with a fixed seed: Ultralytics sizes its
dataloader from the dataset's length when it is built, so the expanded index list keeps one
length for the whole run, and the run is reproducible.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.dataset_manifest import DatasetManifest

DEFAULT_THRESHOLD = 0.25
SAMPLING_FILE = "sampling.json"  # in the run folder, beside results.csv


@dataclass(frozen=True)
class TrainImage:
    """What sampling needs to know of one train image."""

    source: str
    human_classes: frozenset[str]

    @property
    def categories(self) -> frozenset[str]:
        return self.human_classes | {f"source:{self.source}"}


def repeat_factors(images: Sequence[TrainImage], threshold: float) -> np.ndarray:
    if not images:
        return np.zeros(0)
    if threshold <= 0:
        return np.ones(len(images))
    holding = Counter(c for image in images for c in image.categories)
    category_factor = {c: max(1.0, math.sqrt(threshold / (n / len(images)))) for c, n in holding.items()}
    return np.array([max(category_factor[c] for c in image.categories) for image in images])


def expanded_indices(factors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each image index repeated floor(r) times, plus once more with probability frac(r)."""
    rng = np.random.default_rng(seed)
    whole = np.floor(factors).astype(int)
    extra = rng.random(len(factors)) < (factors - whole)
    return np.repeat(np.arange(len(factors)), whole + extra)


def train_images(im_files: Sequence[str], labels: Sequence[np.ndarray], names: Sequence[str],
                 manifest: Path | None) -> list[TrainImage]:
    """One TrainImage per dataset entry, from its label classes and the build's manifest.

    The manifest (`gridwatch dataset build`) says each image's source and which of its classes
    the teacher labelled; without one (a dataset made by hand) every image is one source and
    every class counts as human-labelled."""
    by_file = {}
    if manifest is not None and manifest.is_file():
        built = DatasetManifest.model_validate_json(manifest.read_text(encoding="utf-8"))
        by_file = {entry.file: entry for entry in built.images}
    images = []
    for im_file, cls in zip(im_files, labels):
        path = Path(im_file)
        entry = by_file.get(f"{path.parent.name}/{path.name}")
        pseudo = set(entry.pseudo_labelled_classes) if entry else set()
        classes = {names[int(c)] for c in np.asarray(cls).reshape(-1)} - pseudo
        images.append(TrainImage(source=entry.source if entry else "unknown", human_classes=frozenset(classes)))
    return images


def sampling_report(images: Sequence[TrainImage], factors: np.ndarray, indices: np.ndarray,
                    threshold: float) -> dict:
    """Per category: images holding it, their mean factor, and the draws per epoch it gets.
    Written beside the run (sampling.json) and carried into the model card."""
    draws = np.bincount(indices, minlength=len(images))
    holding: dict[str, list[int]] = {}
    for i, image in enumerate(images):
        for c in image.categories:
            holding.setdefault(c, []).append(i)
    order = sorted(holding, key=lambda c: (not c.startswith("source:"), c))
    return {
        "threshold": threshold,
        "train_images": len(images),
        "draws_per_epoch": len(indices),
        "categories": {c: {"images": len(holding[c]), "mean_factor": round(float(np.mean(factors[holding[c]])), 3),
                           "draws": int(draws[holding[c]].sum())} for c in order},
    }


def report_lines(report: dict) -> list[str]:
    lines = [f"repeat-factor sampling (t={report['threshold']}): {report['train_images']} train images -> "
             f"{report['draws_per_epoch']} draws per epoch"]
    for c, n in report["categories"].items():
        lines.append(f"  {c:<28} {n['images']:>6} images  x{n['mean_factor']:.2f}  {n['draws']:>6} draws")
    return lines


class RepeatedDataset:
    """An Ultralytics dataset seen through an expanded index list; everything else is the dataset's own.

    Attribute access falls through to the wrapped dataset, so the trainer's calls on it
    (close_mosaic, labels, collate_fn) behave as before."""

    def __init__(self, base, indices: np.ndarray) -> None:  # noqa: ANN001 (an Ultralytics YOLODataset)
        self.base = base
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):  # noqa: ANN204
        return self.base[int(self.indices[index])]

    def __getattr__(self, name: str):  # noqa: ANN204
        if name in ("base", "indices"):  # not set yet while unpickling in a dataloader worker
            raise AttributeError(name)
        return getattr(self.base, name)


def run_sampling(run_dir: Path) -> dict:
    """How a run drew its train images, for the card ({} when it drew each once)."""
    path = run_dir / SAMPLING_FILE
    return {"repeat_factor_sampling": json.loads(path.read_text())} if path.is_file() else {}
