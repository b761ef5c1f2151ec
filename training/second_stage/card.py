"""Precision and recall per class on held-out reviewed crops, and the stage's card.

The figures are those of the exported ONNX file as the detector runtime runs it, on frames
held out whole from training. What they are a measure of depends on where the labels came
from, so the card says it in words (`figure`): a city's own reviews, or a test's scripted
reviewer (a mechanism test, not a field precision).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ClassFigures:
    label: str
    support: int  # held-out crops of this label
    predicted: int  # held-out crops the model gave this label
    precision: float | None  # None: never predicted
    recall: float | None  # None: none held out


def per_class(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> list[ClassFigures]:
    out = []
    for label in labels:
        hits = sum(t == p == label for t, p in zip(truth, predicted))
        support, said = sum(t == label for t in truth), sum(p == label for p in predicted)
        out.append(ClassFigures(label, support, said, hits / said if said else None,
                                hits / support if support else None))
    return out


@dataclass
class StageCard:
    stage: str
    stage_class: str
    labels: list[str]
    model: str  # the ONNX file's name
    figure: str  # what the held-out figures measure, in words
    exports: list[str]
    train_counts: dict[str, int]
    held_out_counts: dict[str, int]
    held_out: list[ClassFigures]
    skipped: dict[str, int] = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def figures(self, label: str) -> ClassFigures:
        return next(f for f in self.held_out if f.label == label)

    def to_json(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        rows = "\n".join(f"| {f.label} | {f.support} | {f.predicted} | {_pct(f.precision)} | {_pct(f.recall)} |"
                         for f in self.held_out)
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"# Second stage `{self.stage}` on `{self.stage_class}` crops: {self.model}\n\n"
                f"Labels: {', '.join(self.labels)}. Trained from scratch on {sum(self.train_counts.values())} crops "
                f"({_counts(self.train_counts)}); judged on {sum(self.held_out_counts.values())} held-out crops "
                f"({_counts(self.held_out_counts)}), whole frames held out.\n\n"
                f"**What the figures are:** {self.figure}\n\n"
                "| label | held out | predicted | precision | recall |\n|---|---|---|---|---|\n"
                f"{rows}\n\nReview exports: {', '.join(self.exports)}. Not used: {skipped}.\n")

    def write(self, out: Path) -> tuple[Path, Path]:
        md, js = out / f"{Path(self.model).stem}.md", out / f"{Path(self.model).stem}.json"
        md.write_text(self.markdown(), encoding="utf-8")
        js.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False), encoding="utf-8")
        return md, js


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
