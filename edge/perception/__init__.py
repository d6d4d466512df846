"""Edge perception: face detection, tracking, emotion classification and annotation.

Imports numpy, OpenCV, pydantic and LiteRT only: never TensorFlow or Keras,
which would cost ~600 MB of memory on the device.
"""

from edge.perception.codec import encode_jpeg, encode_png
from edge.perception.pipeline import FaceResult, FrameAnalysis, PerceptionPipeline
from edge.perception.settings import (
    AnnotationSettings,
    ClassificationSettings,
    DetectionSettings,
    TrackingSettings,
)

__all__ = [
    "AnnotationSettings",
    "ClassificationSettings",
    "DetectionSettings",
    "FaceResult",
    "FrameAnalysis",
    "PerceptionPipeline",
    "TrackingSettings",
    "encode_jpeg",
    "encode_png",
]
