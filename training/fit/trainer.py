"""The Ultralytics trainer gridwatch trains with: best.pt judged on what people labelled, and
optionally repeat-factor sampling (training/fit/sampling.py).

Ultralytics keeps as best.pt the epoch with the highest mAP50-95 over every class in the val
split. Most of those classes here are the teacher's pseudo-labelled context (people, cars,
buses), which the COCO start already knows from the first epoch; the classes the model is
trained for are a few. On thela_india alone, 20 epochs at 416 px, best.pt was epoch 1 with
push_cart at 0.014 AP50 while the last epoch reached 0.670: context classes decided. So the
fitness is mAP50-95 over the classes the dataset's manifest says people labelled (or drew:
synthetic flyers and banners) in the val split; Ultralytics' own when there is no manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.data.dataset_manifest import DatasetManifest
from training.fit.sampling import (SAMPLING_FILE, RepeatedDataset, expanded_indices, repeat_factors, report_lines,
                               sampling_report, train_images)


def labelled_val_classes(manifest: Path) -> set[str] | None:
    """Classes with human or synthetic boxes in the val split; None without a manifest."""
    if not manifest.is_file():
        return None
    counts = DatasetManifest.model_validate_json(manifest.read_text(encoding="utf-8")).counts
    return set(counts.human.get("val", {})) | set(counts.synthetic.get("val", {}))


def labelled_fitness(all_ap: np.ndarray, ap_class_index: np.ndarray, names: dict[int, str],
                     labelled: set[str]) -> float | None:
    """mAP50-95 over the labelled classes the validator scored; None when it scored none of them."""
    rows = [i for i, c in enumerate(ap_class_index) if names[int(c)] in labelled]
    return float(np.mean(np.asarray(all_ap)[rows])) if rows else None


def gridwatch_trainer(repeat_threshold: float | None = None, seed: int = 0, log=print):  # noqa: ANN001, ANN201
    from ultralytics.models.yolo.detect import DetectionTrainer

    class GridwatchTrainer(DetectionTrainer):
        def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):  # noqa: ANN202
            dataset = super().build_dataset(img_path, mode, batch)
            if mode != "train" or not repeat_threshold:
                return dataset
            images = train_images(dataset.im_files, [lb["cls"] for lb in dataset.labels], self.data["names"],
                                  self._manifest())
            factors = repeat_factors(images, repeat_threshold)
            indices = expanded_indices(factors, seed)
            report = sampling_report(images, factors, indices, repeat_threshold)
            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.save_dir) / SAMPLING_FILE).write_text(json.dumps(report, indent=1))
            for line in report_lines(report):
                log(line)
            return RepeatedDataset(dataset, indices)

        def validate(self):  # noqa: ANN202
            previous = self.best_fitness
            metrics, fitness = super().validate()
            labelled = labelled_val_classes(self._manifest())
            box = self.validator.metrics.box if metrics is not None else None
            own = labelled_fitness(box.all_ap, box.ap_class_index, self.data["names"], labelled) \
                if box is not None and labelled else None
            if own is None:
                return metrics, fitness
            self.best_fitness = own if previous is None or own > previous else previous
            return metrics, own

        def _manifest(self) -> Path:
            return Path(self.args.data).parent / "manifest.json"

    return GridwatchTrainer
