"""A small CNN on object crops, trained from scratch on CPU, exported as the ONNX file
`detector.second_stage.CropClassifier` runs (its labels and class in the metadata).

Nothing is downloaded: four stride-2 convolutions (about 0.1 M weights) learn from a city's
few hundred reviewed crops in minutes on one core. Crops are cut by the serving code's own
`crop_batch`, so what the model learns on is what it is asked about.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detector.second_stage import LOAD_DECISION, crop_batch
from training.second_stage.examples import CropExample

DEFAULT_SIZE = 64


@dataclass(frozen=True)
class TrainOptions:
    size: int = DEFAULT_SIZE  # crop side in pixels
    epochs: int = 60
    batch: int = 32
    lr: float = 3e-3
    seed: int = 0
    threads: int = 1  # the trainer shares the machine; a few hundred crops need no more


def crops(examples: Sequence[CropExample], size: int) -> np.ndarray:
    """(N, 3, size, size) float RGB in 0..1, each frame decoded once."""
    out = np.empty((len(examples), 3, size, size), np.float32)
    by_image: dict[Path, list[int]] = {}
    for i, ex in enumerate(examples):
        by_image.setdefault(ex.image, []).append(i)
    for image, indices in by_image.items():
        frame = cv2.imread(str(image))
        if frame is None:
            raise ValueError(f"{image}: not a readable image")
        out[indices] = crop_batch(frame, np.asarray([examples[i].box for i in indices], np.float32), (size, size))
    return out


def build_net(classes: int):  # noqa: ANN201 - torch is imported inside
    import torch.nn as nn

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 64), *block(64, 96),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(96, classes))


def train(x: np.ndarray, y: np.ndarray, labels: Sequence[str], options: TrainOptions = TrainOptions(),
          log: Callable[[str], None] = print):  # noqa: ANN201
    """Fit the CNN to crops `x` with label indices `y`; classes weighted by inverse frequency,
    so a city with few open loads does not learn "always covered"."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(options.seed)
    torch.set_num_threads(options.threads)
    rng = np.random.default_rng(options.seed)
    net = build_net(len(labels))
    counts = np.bincount(y, minlength=len(labels)).astype(np.float32)
    weights = torch.tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(labels), 0.0),
                           dtype=torch.float32)
    optimiser = torch.optim.AdamW(net.parameters(), lr=options.lr, weight_decay=1e-3)
    steps = options.epochs * max(1, int(np.ceil(len(x) / options.batch)))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=options.lr, total_steps=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    for epoch in range(options.epochs):
        net.train()
        order = rng.permutation(len(x))
        total = 0.0
        for start in range(0, len(x), options.batch):
            idx = order[start:start + options.batch]
            batch = _augment(xt[idx], rng)
            loss = F.cross_entropy(net(batch), yt[idx], weight=weights)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(idx)
        if epoch == options.epochs - 1 or epoch % 10 == 0:
            log(f"epoch {epoch + 1}/{options.epochs}: loss {total / len(x):.3f}")
    return net.eval()


def _augment(batch, rng: np.random.Generator):  # noqa: ANN001, ANN202
    """Views a road camera gives the same load: mirrored, lighter or darker, shifted a little."""
    import torch

    batch = batch.clone()
    flip = torch.from_numpy(rng.random(len(batch)) < 0.5)
    batch[flip] = batch[flip].flip(-1)
    gain = torch.from_numpy(rng.uniform(0.6, 1.4, (len(batch), 1, 1, 1)).astype(np.float32))
    offset = torch.from_numpy(rng.uniform(-0.1, 0.1, (len(batch), 1, 1, 1)).astype(np.float32))
    batch = (batch * gain + offset).clamp(0, 1)
    dx, dy = (int(v) for v in rng.integers(-4, 5, 2))
    return torch.roll(batch, shifts=(dy, dx), dims=(2, 3))


def export_onnx(net, path: Path, labels: Sequence[str], *, stage_class: str, size: int,  # noqa: ANN001
                stage: str = LOAD_DECISION, version: str = "") -> Path:
    """The ONNX file CropClassifier loads: (N, 3, size, size) in, logits out, labels in the metadata."""
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, torch.zeros(1, 3, size, size), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    meta = {"gridwatch_labels": json.dumps(list(labels)), "gridwatch_stage_class": stage_class,
            "gridwatch_stage": stage, "gridwatch_model_version": version or path.stem}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def label_counts(examples: Sequence[CropExample]) -> dict[str, int]:
    return dict(sorted(Counter(ex.label for ex in examples).items()))
