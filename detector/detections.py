"""The one type every stage speaks: the detections of one frame."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Boxes found in one frame, in that frame's own pixel coordinates."""

    xyxy: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    class_ids: np.ndarray  # (N,) int64
    names: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.xyxy.shape != (n, 4) or self.class_ids.shape != (n,):
            raise ValueError(
                f"inconsistent detections: xyxy {self.xyxy.shape}, scores {self.scores.shape}, "
                f"class_ids {self.class_ids.shape}"
            )

    @classmethod
    def empty(cls, names: Mapping[int, str] | None = None) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
            names=names or {},
        )

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: Any) -> Detections:
        """Select by boolean mask, index array or slice; always returns Detections."""
        if isinstance(index, (int, np.integer)):
            index = [index]
        return Detections(
            xyxy=self.xyxy[index],
            scores=self.scores[index],
            class_ids=self.class_ids[index],
            names=self.names,
        )

    def scaled(self, sx: float, sy: float) -> Detections:
        """The same boxes in a frame `sx` x `sy` times this one's size (a frame decoded at
        reduced size -> the original's pixels)."""
        factors = np.array([sx, sy, sx, sy], np.float32)
        return Detections(xyxy=self.xyxy * factors, scores=self.scores, class_ids=self.class_ids, names=self.names)

    @property
    def class_names(self) -> list[str]:
        return [self.names.get(int(c), str(int(c))) for c in self.class_ids]

    def with_classes(self, class_names: set[str] | frozenset[str]) -> Detections:
        return self[np.array([n in class_names for n in self.class_names], dtype=bool)]

    def to_records(self, precision: int = 1) -> list[dict[str, Any]]:
        """JSON-ready list: one dict per box."""
        return [
            {
                "class_id": int(c),
                "class_name": name,
                "score": round(float(s), 4),
                "box": [round(float(v), precision) for v in box],
            }
            for box, s, c, name in zip(self.xyxy, self.scores, self.class_ids, self.class_names)
        ]
