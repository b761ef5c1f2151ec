"""The rules a case lives by: when two sightings are one case, and when a case goes out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from serving.store.models import Case

# The city's case system moves a case forward only. "reopened" is set by a re-check that
# still saw the violation (serving/cases/recheck.py): the case is back to be dispatched and
# handled again, so it ranks with "dispatched".
STATUS_ORDER = {"new": 0, "dispatched": 1, "reopened": 1, "handled": 2, "closed": 3}


class CaseError(ValueError):
    """A request about a case cannot be done; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CasePolicy:
    cooldown_s: float = 600.0
    min_iou: float = 0.1
    reopen_policy: Literal["reopen", "new"] = "reopen"
    timeline_frames: int = 6  # moments of the event kept beside the best frame (settings.timeline_frames)
    auto_confirm: dict[str, float] = field(default_factory=dict)
    # (camera, violation) -> the auto-confirm score fitted to that pair's reviews, if any
    # (serving/cases/thresholds.py); it replaces the setting only where the setting is given.
    learned_auto_confirm: Callable[[str, str], float | None] | None = field(default=None, compare=False)

    @classmethod
    def from_settings(cls, settings: Any, learned_auto_confirm: Callable[[str, str], float | None] | None = None,
                      ) -> CasePolicy:
        return cls(
            cooldown_s=settings.dedup_cooldown_s,
            min_iou=settings.dedup_min_iou,
            reopen_policy=settings.reopen_policy,
            timeline_frames=settings.timeline_frames,
            auto_confirm=dict(settings.auto_confirm),
            learned_auto_confirm=learned_auto_confirm,
        )

    def auto_confirm_score(self, camera: str, violation: str) -> float | None:
        threshold = self.auto_confirm.get(violation)
        if threshold is not None and self.learned_auto_confirm is not None:
            learned = self.learned_auto_confirm(camera, violation)
            threshold = threshold if learned is None else learned
        return threshold

    def deliverable(self, case: Case) -> bool:
        """Confirmed by a reviewer, or unreviewed and sure enough for this camera and violation."""
        if case.review_status in ("confirmed", "corrected"):
            return True
        if case.review_status != "pending" or case.needs_review:
            return False
        threshold = self.auto_confirm_score(case.camera, case.violation)
        return threshold is not None and case.score >= threshold

    def route(self, violation: str, *, rule_score: float | None = None, scene_change: bool = False,
              camera: str = "") -> str:
        """How a camera rule's cases reach the case system, in words for the start-up log."""
        if scene_change:
            return "review (scene-change candidates always need a reviewer)"
        threshold = self.auto_confirm_score(camera, violation)
        if threshold is None:
            return f"review (settings.auto_confirm has no score for {violation})"
        learned = " (learned from reviews)" if threshold != self.auto_confirm[violation] else ""
        return f"auto-confirm at score >= {max(threshold, rule_score or 0.0):g}{learned}, review below it"
