"""The detection pipeline: sampled frames -> Detector (batched) -> tracker -> rules -> ViolationEvent."""

from serving.pipeline.runner import NO_TILED_CHECK, CameraRuntime, EventSink, Pipeline, TiledCheckState

__all__ = ["NO_TILED_CHECK", "CameraRuntime", "EventSink", "Pipeline", "TiledCheckState"]
