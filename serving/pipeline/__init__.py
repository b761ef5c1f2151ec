"""The detection pipeline: sampled frames -> Detector (batched) -> tracker -> rules -> ViolationEvent."""

from serving.pipeline.runner import CameraRuntime, EventSink, Pipeline

__all__ = ["CameraRuntime", "EventSink", "Pipeline"]
