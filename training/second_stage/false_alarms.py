"""The false-alarm filter learnt from reviews, per violation: `gridwatch second-stage false-alarms`.

The same crop classifier as the load decision, asked another question: on the crop of a case's
object, was the case confirmed (or corrected) or rejected? Measured on a replay of the reviewed
cases: the frames are dealt into folds, each fold scored by a model trained on the others (no
case is scored by a model that saw it), and the filter's threshold is set so that at least
`recall` of the confirmed cases would still have been filed; the figure is how many rejected
cases that threshold would have removed.

Per violation through its detector classes: a review export says which boxes reviewers kept or
rejected but not which case each came from, so a violation's cases are the reviewed boxes of
its classes (the truck's are muck_truck_uncovered's).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.taxonomy import Taxonomy
from training.second_stage.examples import CONFIRMED, REJECTED, CropExample, ReadReport, reviewed_objects
from training.second_stage.net import TrainOptions, crops, train

MIN_CASES = 5  # of each side: fewer says nothing about a threshold


@dataclass(frozen=True)
class FilterFigures:
    violation: str
    classes: list[str]
    confirmed: int  # reviewed cases replayed, each side
    rejected: int
    recall_target: float
    threshold: float | None  # on P(confirmed); None: too few cases to measure
    confirmed_kept: int
    rejected_removed: int
    folds: int
    note: str = ""

    @property
    def removed_share(self) -> float | None:
        return self.rejected_removed / self.rejected if self.rejected and self.threshold is not None else None


def removed_at_recall(confirmed: Sequence[float], rejected: Sequence[float], recall: float) -> tuple[float, int, int]:
    """(threshold, confirmed kept, rejected removed): the highest score threshold that keeps at
    least `recall` of the confirmed cases (a case is kept when its score >= threshold)."""
    if not confirmed or not 0 < recall <= 1:
        raise ValueError("need confirmed scores and a recall in (0, 1]")
    ranked = sorted(confirmed, reverse=True)
    threshold = ranked[math.ceil(recall * len(ranked)) - 1]
    return threshold, sum(s >= threshold for s in confirmed), sum(s < threshold for s in rejected)


def replay_scores(examples: Sequence[CropExample], folds: int, options: TrainOptions,
                  log: Callable[[str], None] = print) -> list[float | None]:
    """P(confirmed) of each example from a model trained on the other folds (None: its fold's
    training side lacked one of the two decisions)."""
    import torch

    fold_of = [zlib.crc32(ex.stem.encode()) % folds for ex in examples]
    x = crops(examples, options.size)
    y = np.array([0 if ex.label == CONFIRMED else 1 for ex in examples])
    scores: list[float | None] = [None] * len(examples)
    for fold in range(folds):
        test = [i for i, f in enumerate(fold_of) if f == fold]
        rest = [i for i, f in enumerate(fold_of) if f != fold]
        if not test or len(set(y[rest])) < 2:
            continue
        net = train(x[rest], y[rest], [CONFIRMED, REJECTED], options, log=lambda _: None)
        with torch.no_grad():
            p = torch.softmax(net(torch.from_numpy(x[test])), 1)[:, 0].numpy()
        for i, score in zip(test, p):
            scores[i] = float(score)
        log(f"  fold {fold + 1}/{folds}: {len(test)} cases scored")
    return scores


def measure_violation(violation: str, classes: Sequence[str], examples: Sequence[CropExample], *, recall: float,
                      folds: int, options: TrainOptions, log: Callable[[str], None] = print) -> FilterFigures:
    mine = [ex for ex in examples if ex.cls in classes]
    n_conf, n_rej = sum(ex.label == CONFIRMED for ex in mine), sum(ex.label == REJECTED for ex in mine)
    if n_conf < MIN_CASES or n_rej < MIN_CASES:
        return FilterFigures(violation, list(classes), n_conf, n_rej, recall, None, n_conf, 0, folds,
                             note=f"too few reviewed cases (need {MIN_CASES} of each)")
    log(f"{violation}: replaying {n_conf} confirmed and {n_rej} rejected cases in {folds} folds")
    scores = replay_scores(mine, folds, options, log)
    scored = [(ex, s) for ex, s in zip(mine, scores) if s is not None]
    conf = [s for ex, s in scored if ex.label == CONFIRMED]
    rej = [s for ex, s in scored if ex.label == REJECTED]
    note = "" if len(scored) == len(mine) else f"{len(mine) - len(scored)} cases in folds that could not train"
    if not conf:
        return FilterFigures(violation, list(classes), 0, len(rej), recall, None, 0, 0, folds, note=note)
    threshold, kept, removed = removed_at_recall(conf, rej, recall)
    return FilterFigures(violation, list(classes), len(conf), len(rej), recall, threshold, kept, removed, folds, note)


def measure(exports: Sequence[Path], taxonomy: Taxonomy, *, violations: Sequence[str] = (), recall: float = 0.95,
            folds: int = 4, options: TrainOptions = TrainOptions(),
            log: Callable[[str], None] = print) -> tuple[list[FilterFigures], ReadReport]:
    """The filter's figures for each violation (all of the taxonomy's with reviewed boxes by default)."""
    report = ReadReport()
    examples = [ex for export in exports for ex in reviewed_objects(export, report)]
    seen = {ex.cls for ex in examples}
    chosen = list(violations) or [v.id for v in taxonomy.violations
                                  if not v.scene_change and set(v.detector_classes) & seen]
    unknown = [v for v in chosen if v not in taxonomy]
    if unknown:
        raise ValueError(f"unknown violation {unknown[0]!r}")
    return [measure_violation(v, taxonomy[v].detector_classes, examples, recall=recall, folds=folds,
                              options=options, log=log) for v in chosen], report


def table(figures: Sequence[FilterFigures]) -> str:
    lines = ["violation | confirmed | rejected | threshold | confirmed kept | rejected removed",
             "---|---|---|---|---|---"]
    for f in figures:
        if f.threshold is None:
            lines.append(f"{f.violation} | {f.confirmed} | {f.rejected} | - | - | - ({f.note})")
        else:
            lines.append(f"{f.violation} | {f.confirmed} | {f.rejected} | {f.threshold:.3f} | "
                         f"{f.confirmed_kept} ({f.confirmed_kept / f.confirmed:.1%}) | "
                         f"{f.rejected_removed} ({f.removed_share:.1%})" + (f" ({f.note})" if f.note else ""))
    return "\n".join(lines)
