"""Labelling items for tests: real photos, the detections a real model made in them, queued
through the service's own `on_sample` as the pipeline hands them over."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2

from tests.support.service import RunningService

SAMPLED_AT = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)


def queue_samples(server: RunningService, images: list[Path], count: int, camera: str = "cam-lab") -> list[int]:
    from serving.pipeline.uncertainty import LabellingSample

    service = server.service
    for i in range(count):
        image = cv2.imread(str(images[i % len(images)]), cv2.IMREAD_COLOR)
        seen = service.detector.detect([image])[0]
        service.on_sample(LabellingSample(camera=camera, taken_at=SAMPLED_AT + timedelta(minutes=10 * i),
                                          reasons=("score_band",), image=image, detections=seen,
                                          model_version=service.detector.version))
    return [item.id for item in service.labelling.list(camera=camera)][-count:]
