"""gridwatch's detector runtime: ONNX Runtime inference, no torch.

    from detector import Detector
    results = Detector("model.onnx").detect([bgr_frame])
"""

from detector.annotate import annotate
from detector.detections import Detections
from detector.model import DetectorError, InvalidImageError, ModelInfo, ModelLoadError
from detector.runtime import DEFAULT_IOU_THRESHOLD, DEFAULT_SCORE_THRESHOLD, Detector
from detector.taxonomy import Taxonomy, TaxonomyError, Violation, load_taxonomy

__all__ = [
    "Detections",
    "annotate",
    "DEFAULT_IOU_THRESHOLD",
    "DEFAULT_SCORE_THRESHOLD",
    "Detector",
    "DetectorError",
    "InvalidImageError",
    "ModelInfo",
    "ModelLoadError",
    "Taxonomy",
    "TaxonomyError",
    "Violation",
    "load_taxonomy",
]
