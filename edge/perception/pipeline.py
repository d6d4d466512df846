"""The per-frame perception pipeline: detect + track, classify, draw."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from contract.emotions import EMOTIONS
from edge.perception.annotate import annotate
from edge.perception.boxes import Box
from edge.perception.classifier import EmotionModel, FaceClassifier, PredictFunction
from edge.perception.detector import FaceDetector, to_gray
from edge.perception.settings import (
    AnnotationSettings,
    ClassificationSettings,
    DetectionSettings,
    TrackingSettings,
)
from edge.perception.tracker import FaceTracker

TIMING_KEYS = ("detect", "classify", "draw")


@dataclass
class FaceResult:
    """One classified face of a frame.

    ``label``/``confidence`` are the arg-max/max of this frame's
    ``probabilities`` (what contract.messages.Face requires);
    ``smoothed_label`` is the label averaged over the track's last frames, or
    None when smoothing is off.
    """

    box: Box
    probabilities: np.ndarray
    label: str
    confidence: float
    track_id: int
    crop64: np.ndarray
    smoothed_label: str | None = None


@dataclass
class FrameAnalysis:
    """Everything the agent needs from one frame."""

    faces: list[FaceResult]
    annotated: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)


def top_label(probabilities: np.ndarray) -> tuple[str, float]:
    best = int(np.argmax(probabilities))
    return EMOTIONS[best], float(probabilities[best])


class PerceptionPipeline:
    """Detects, tracks, classifies and draws the faces of successive frames of one source.

    Keeps state between frames (tracks, the detection schedule): use one
    pipeline per video source, or call ``reset`` when the source changes.
    """

    def __init__(
        self,
        detection: DetectionSettings | None,
        tracking: TrackingSettings | None,
        annotation: AnnotationSettings | None,
        model: EmotionModel | PredictFunction,
        classification: ClassificationSettings | None = None,
    ) -> None:
        self.detector = FaceDetector(detection or DetectionSettings())
        self.tracker = FaceTracker(tracking or TrackingSettings())
        self.classifier = FaceClassifier(model, classification or ClassificationSettings())
        self.annotation = annotation or AnnotationSettings()

    def reset(self) -> None:
        """Forget tracks and the detection schedule (call when switching to another source)."""
        self.detector.reset()
        self.tracker.reset()

    def process(self, frame_bgr: np.ndarray) -> FrameAnalysis:
        """Analyse one BGR frame: faces with track ids, probabilities and crops, plus the annotated frame.

        ``timings_ms`` has exactly the keys "detect" (grey conversion,
        detection, tracking), "classify" (crops, preprocessing, model) and "draw".
        """
        started = time.perf_counter()
        gray, boxes, track_ids = self.detect_and_track(frame_bgr)
        detected = time.perf_counter()
        probabilities, crops = self.classifier.classify(gray, boxes)
        faces = [self._face_result(*parts) for parts in zip(boxes, track_ids, probabilities, crops)]
        classified = time.perf_counter()
        annotated = annotate(frame_bgr, faces, self.annotation)
        drawn = time.perf_counter()
        timings = {
            "detect": (detected - started) * 1000.0,
            "classify": (classified - detected) * 1000.0,
            "draw": (drawn - classified) * 1000.0,
        }
        return FrameAnalysis(faces=faces, annotated=annotated, timings_ms=timings)

    def detect_and_track(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, list[Box], list[int]]:
        """The detection step of ``process`` alone: the grey frame, this frame's face boxes and their track ids."""
        gray = to_gray(frame_bgr)
        boxes = self.detector.detect(gray, self.tracker.search_boxes(), color=frame_bgr)
        if self.detector.scene_cut:
            self.tracker.reset()  # another picture: no face of the last scene continues
        track_ids = self.tracker.update(boxes, whole_frame=self.detector.last_boxes_searched)
        return gray, boxes, track_ids

    def _face_result(self, box: Box, track_id: int, probabilities: np.ndarray, crop: np.ndarray) -> FaceResult:
        label, confidence = top_label(probabilities)
        smoothed = self.tracker.smoothed_probabilities(track_id, probabilities)
        smoothed_label = top_label(smoothed)[0] if smoothed is not None else None
        return FaceResult(
            box=box,
            probabilities=probabilities,
            label=label,
            confidence=confidence,
            track_id=track_id,
            crop64=crop,
            smoothed_label=smoothed_label,
        )
