"""Champion/challenger: a new model replaces the shipped default only if it is not worse.

`gridwatch retrain` judges on two splits: the base sources' real val split (the challenger
must not be worse there) and the val frames of the city's own reviews (there it must be
better: a retrain that teaches the city's cameras nothing is not worth a swap).

Both are scored by `gridwatch eval` arithmetic on the same validation split: mAP50-95
over the classes that split has at least FEW_INSTANCES boxes of (all its classes
when none has that many). A class with a handful of boxes moves by tens of AP points on
one hit or miss; with equal weight in the mean it would decide the promotion by chance.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from training.evaluation.metrics import FEW_INSTANCES, EvalResult

# AP50 points a class may lose against the champion before the decision names it.
DROP_POINTS = 5.0


@dataclass(frozen=True)
class ClassDrop:
    name: str
    instances: int  # val boxes of the class
    champion_ap50: float
    challenger_ap50: float


@dataclass(frozen=True)
class Decision:
    promote: bool
    challenger_score: float
    champion_score: float | None
    metric: str
    reason: str
    drops: tuple[ClassDrop, ...] = ()
    # Drops of classes a violation rule uses: each blocks promotion (see `guard_rule_classes`).
    blocked_by: tuple[ClassDrop, ...] = ()
    forced_reason: str | None = None  # the person's reason for promoting despite `blocked_by`

    def summary(self) -> str:
        champion = "none shipped" if self.champion_score is None else f"{self.champion_score:.4f}"
        verdict = "PROMOTE" if self.promote else "KEEP CHAMPION"
        line = (
            f"champion/challenger on the same split ({self.metric}): challenger {self.challenger_score:.4f}, "
            f"champion {champion} -> {verdict} ({self.reason})"
        )
        if self.drops:
            line += f"\nAP50 fell by more than {DROP_POINTS:g} points: " + ", ".join(
                f"{d.name} {d.champion_ap50:.3f} -> {d.challenger_ap50:.3f} ({d.instances} val boxes)" for d in self.drops)
        return line + _guard_lines(self)


def _guard_lines(d: Decision) -> str:
    if not d.blocked_by:
        return ""
    names = ", ".join(c.name for c in d.blocked_by)
    if d.forced_reason is not None:
        return f"\nFORCED past the rule-class guard ({names} fell): {d.forced_reason}"
    return (f"\nBLOCKED: a class a violation rule uses fell by more than {DROP_POINTS:g} AP50 points ({names}); "
            "promote anyway only with --force-reason TEXT")


def class_drops(challenger: EvalResult, champion: EvalResult, points: float = DROP_POINTS) -> tuple[ClassDrop, ...]:
    """Classes whose AP50 fell by more than `points` against the champion, those with a handful of
    val boxes too: too noisy to decide a promotion, but a rule that uses one should hear of it."""
    return tuple(ClassDrop(name, m.instances, champion.classes[name].ap50, m.ap50)
                 for name, m in sorted(challenger.classes.items())
                 if name in champion.classes and (champion.classes[name].ap50 - m.ap50) * 100 > points)


def rule_classes(taxonomy=None) -> frozenset[str]:
    """Detector classes some violation kind is evidenced by (detector/taxonomy.yaml): the classes
    whose fall a reviewer or a city would feel as missed cases."""
    if taxonomy is None:
        from detector.taxonomy import load_taxonomy

        taxonomy = load_taxonomy()
    # pending kinds too: they file cases as soon as a city gives their matter code
    return frozenset(c for v in (*taxonomy.violations, *taxonomy.pending) for c in v.detector_classes)


def guard_rule_classes(decision: Decision, rules_use: Iterable[str], force_reason: str | None = None) -> Decision:
    """Block a promotion when a class in `rules_use` fell by more than DROP_POINTS AP50 points.

    Unlike the promotion metric, a class with a handful of val boxes blocks too: truck, the only
    class behind muck_truck_uncovered, had 16 val boxes when it fell 0.701 -> 0.576 and the
    default kept shipping. A person may still promote, but only by giving a reason, which the
    decision (and so the model card) carries.
    """
    if force_reason is not None and not force_reason.strip():
        raise ValueError("--force-reason needs a reason: say why the fall is acceptable")
    used = frozenset(rules_use)
    blocked = tuple(d for d in decision.drops if d.name in used)
    if not blocked:
        return decision
    names = ", ".join(d.name for d in blocked)
    if force_reason is not None:
        return replace(decision, blocked_by=blocked, forced_reason=force_reason.strip(),
                       reason=f"{decision.reason}; forced past the fall of {names}")
    return replace(decision, promote=False, blocked_by=blocked,
                   reason=f"{decision.reason}, but rule classes fell: {names}")


def decision_classes(result: EvalResult) -> list[str]:
    counted = [name for name, m in result.classes.items() if m.instances >= FEW_INSTANCES]
    return counted or list(result.classes)


def score(result: EvalResult, classes: list[str]) -> float:
    return sum(result.classes[c].ap50_95 for c in classes) / len(classes) if classes else 0.0


def decide(challenger: EvalResult, champion: EvalResult | None, *, must_beat: bool = False) -> Decision:
    """Promote when the challenger is not worse (`must_beat`: strictly better) on this split."""
    classes = decision_classes(challenger)
    metric = (f"mAP50-95 over {', '.join(classes)}" if len(classes) < len(challenger.classes)
              else "mAP50-95")
    ch = score(challenger, classes)
    if champion is None:
        return Decision(True, ch, None, metric, "no current default")
    missing = set(challenger.classes) ^ set(champion.classes)
    if missing:
        raise ValueError(f"scores are not on the same split: classes differ {sorted(missing)}")
    cur = score(champion, classes)
    if must_beat:
        promote = ch > cur
        reason = "better than the current default" if promote else "not better than the current default"
    else:
        promote = ch >= cur
        reason = "not worse than the current default" if promote else "worse than the current default"
    return Decision(promote, ch, cur, metric, reason, class_drops(challenger, champion))


@dataclass(frozen=True)
class LoopDecision:
    """The retrain verdict: not worse on the base split and better on the review split."""

    base: Decision
    review: Decision

    @property
    def promote(self) -> bool:
        return self.base.promote and self.review.promote

    def summary(self) -> str:
        def line(split: str, d: Decision) -> str:
            champion = "none shipped" if d.champion_score is None else f"{d.champion_score:.4f}"
            return (f"{split} ({d.metric}): challenger {d.challenger_score:.4f}, champion {champion} -> "
                    f"{'passes' if d.promote else 'fails'} ({d.reason})")

        verdict = "PROMOTE" if self.promote else "KEEP CHAMPION"
        guard = _guard_lines(self.base).lstrip("\n")
        # The classes that fell are named in retrain's log too, as `train` and the card name them.
        fell = [f"AP50 fell by more than {DROP_POINTS:g} points on the base split: " + ", ".join(
            f"{d.name} {d.champion_ap50:.3f} -> {d.challenger_ap50:.3f} ({d.instances} val boxes)"
            for d in self.base.drops)] if self.base.drops else []
        return "\n".join([line("base real val, must not be worse", self.base), *fell,
                          line("review val, must be better", self.review)]
                         + ([guard] if guard else []) + [f"decision: {verdict}"])


def decide_loop(base_challenger: EvalResult, base_champion: EvalResult | None,
                review_challenger: EvalResult, review_champion: EvalResult | None) -> LoopDecision:
    return LoopDecision(decide(base_challenger, base_champion),
                        decide(review_challenger, review_champion, must_beat=True))


def guard_loop(decision: LoopDecision, rules_use: Iterable[str], force_reason: str | None = None) -> LoopDecision:
    """The rule-class guard on the base split, where the whole city's classes are measured."""
    return replace(decision, base=guard_rule_classes(decision.base, rules_use, force_reason))


def install(files: dict[str, Path], weights_dir: Path) -> list[Path]:
    """Copy the challenger's files into weights/ under their shipped names.

    Each file is written beside its target and renamed over it, so a reader never sees
    half a model; the card goes last so it never describes files that are not there yet.
    """
    weights_dir.mkdir(parents=True, exist_ok=True)
    installed = []
    order = sorted(files, key=lambda name: name.endswith((".md", ".json")))
    for name in order:
        target = weights_dir / name
        staging = target.with_name(f".{name}.incoming")
        shutil.copyfile(files[name], staging)
        staging.replace(target)
        installed.append(target)
    return installed
