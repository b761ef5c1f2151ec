"""The Ultralytics trainer gridwatch trains with: best.pt judged on what people labelled, and
optionally repeat-factor sampling (training/fit/sampling.py).

Ultralytics keeps as best.pt the epoch with the highest mAP50-95 over every class in the val
split. Most of those classes here are the teacher's pseudo-labelled context (people, cars,
buses), which the COCO start already knows from the first epoch; the classes the model is
trained for are a few. On thela_india alone, 20 epochs at 416 px, best.pt was epoch 1 with
push_cart at 0.014 AP50 while the last epoch reached 0.670: context classes decided. So the
fitness is mAP50-95 over the classes the dataset's manifest says people labelled (or drew:
synthetic flyers and banners) in the val split; Ultralytics' own when there is no manifest.

A class refit (`refit_classes`) trains only the rows of the detection head's last class
convolutions that score the named classes; everything else is frozen and every other class's
row is put back after each step, so every other class's score is computed exactly as before. A
trainer can then teach the model one class (a city's own trucks) at almost no risk to the rest:
a detection of another class changes only where a refit class now outscores it on the same
cell, since each cell keeps its best class.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.data.dataset_manifest import DatasetManifest
from training.export.row_graft import class_names, class_score_convs
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


def refit_freeze_list(model) -> list[str]:  # noqa: ANN001
    """Ultralytics' `freeze` entries (prefixes after "model.") that freeze all but the class-score
    convolutions: every layer before the head, the box branches, and the class branches' inner layers."""
    last = len(model.model) - 1
    head = model.model[-1]
    inner = [f"{last}.cv3.{i}.{j}" for i, branch in enumerate(head.cv3) for j in range(len(branch) - 1)]
    others = [f"{last}.{name}" for name, _ in head.named_children() if name != "cv3"]
    return [str(i) for i in range(last)] + others + inner


REFIT_FILE = "class_refit.json"  # in the run folder: which classes a refit trained, for --resume and the card


def run_refit_classes(run_dir: Path) -> list[str]:
    path = run_dir / REFIT_FILE
    return json.loads(path.read_text())["classes"] if path.is_file() else []


class ClassRefit:
    """Keeps every class-score row but those of `classes` as the start had them."""

    def __init__(self, model, names: dict[int, str], classes: Sequence[str]) -> None:  # noqa: ANN001
        unknown = sorted(set(classes) - set(names.values()))
        if unknown:
            raise ValueError(f"refit classes not in the model: {', '.join(unknown)}")
        import torch

        self.kept = torch.tensor([names[k] not in classes for k in sorted(names)])
        self.start = [(conv.weight.detach().clone(), conv.bias.detach().clone())
                      for conv in class_score_convs(model)]
        for conv in class_score_convs(model):
            for param in (conv.weight, conv.bias):
                mask = (~self.kept).to(param.dtype).view(-1, *[1] * (param.dim() - 1))
                param.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device))

    def restore(self, model) -> None:  # noqa: ANN001
        """Weight decay and the EMA would still move the kept rows: put them back."""
        import torch

        with torch.no_grad():
            for conv, (weight, bias) in zip(class_score_convs(model), self.start):
                kept = self.kept.to(conv.weight.device)
                conv.weight[kept] = weight.to(conv.weight.device, conv.weight.dtype)[kept]
                conv.bias[kept] = bias.to(conv.bias.device, conv.bias.dtype)[kept]


def graft_refit_rows(start: Path, trained: Path, classes: Sequence[str]) -> None:
    """Rewrite the `trained` checkpoint as the start model with only the refit classes' score rows
    taken from training. Ultralytics saves checkpoints in half precision; rounding every other
    weight moves the scores the refit promised to keep (a little: person's AP50 by 0.001 on the
    shipped model), so the rest stays the start's, in full precision."""
    import torch

    from training.export.export import checkpoint_model, load_checkpoint

    model = checkpoint_model(load_checkpoint(start))
    checkpoint = load_checkpoint(trained)
    learnt = checkpoint_model(checkpoint)
    names = class_names(learnt)
    rows = torch.tensor([names[k] in classes for k in sorted(names)])
    with torch.no_grad():
        for conv, taught in zip(class_score_convs(model), class_score_convs(learnt)):
            conv.weight[rows] = taught.weight[rows]
            conv.bias[rows] = taught.bias[rows]
    model.names = learnt.names
    checkpoint.update(model=model, ema=None)
    torch.save(checkpoint, trained)


def gridwatch_trainer(repeat_threshold: float | None = None, seed: int = 0, log=print,  # noqa: ANN001, ANN201
                      refit_classes: Sequence[str] = ()):
    from ultralytics.models.yolo.detect import DetectionTrainer

    class GridwatchTrainer(DetectionTrainer):
        refit: ClassRefit | None = None

        def setup_model(self):  # noqa: ANN202
            checkpoint = super().setup_model()
            if refit_classes:
                self.args.freeze = refit_freeze_list(self.model)
                self.refit = ClassRefit(self.model, self.data["names"], refit_classes)
                Path(self.save_dir).mkdir(parents=True, exist_ok=True)
                (Path(self.save_dir) / REFIT_FILE).write_text(json.dumps({"classes": list(refit_classes)}))
                log(f"class refit: only the score rows of {', '.join(refit_classes)} learn")
            return checkpoint

        def optimizer_step(self):  # noqa: ANN202
            super().optimizer_step()
            if self.refit is not None:
                self.refit.restore(self.model)
                if self.ema:
                    self.refit.restore(self.ema.ema)

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
