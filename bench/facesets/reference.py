"""The detectors the edge pipeline is compared with: none of them is the truth, each answers one question.

* ``ReferenceDetector``: MediaPipe BlazeFace (the back-camera 256 px model)
  on the whole frame and on overlapping square tiles, boxes mapped to the
  Haar convention. A neural detector trained on other data than the Haar
  cascade, so its mistakes are not Haar's; it annotates the real clips and
  the photos the synthetic clips are made of.
* ``ExhaustiveHaar``: the edge's cascade at full resolution, small pyramid
  steps, every face size: what Haar can find at all, at any cost.
* ``FerHaar``: the ``fer`` package's own call (``FER(mtcnn=False)``:
  full-resolution grey frame, scaleFactor 1.1, minNeighbors 5, minSize
  50 px, CASCADE_SCALE_IMAGE), reimplemented so no TensorFlow is imported.

Each has ``detect(frame_bgr) -> list[Box]`` (Haar convention, full-resolution pixels).
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.perception.blazeface import BlazeFace, Detection, to_haar_convention, weighted_nms
from edge.perception.boxes import Box, to_box
from edge.perception.detector import load_cascade, to_gray

# fer 25.10.3, fer/fer.py FER.__init__ defaults and find_faces()
FER_SCALE_FACTOR = 1.1
FER_MIN_NEIGHBORS = 5
FER_MIN_FACE_SIZE = 50

EXHAUSTIVE_SCALE_FACTOR = 1.05
EXHAUSTIVE_MIN_NEIGHBORS = 5
EXHAUSTIVE_MIN_SIZE = 24  # the cascade's window: the smallest face it can see

REFERENCE_VARIANT = "back"
REFERENCE_MIN_SCORE = 0.6


class FerHaar:
    """fer's face finding, call for call (without its emotion model)."""

    name = "fer settings"

    def __init__(self) -> None:
        self._cascade = load_cascade(None)

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        faces = self._cascade.detectMultiScale(
            to_gray(frame_bgr),
            scaleFactor=FER_SCALE_FACTOR,
            minNeighbors=FER_MIN_NEIGHBORS,
            flags=cv2.CASCADE_SCALE_IMAGE,
            minSize=(FER_MIN_FACE_SIZE, FER_MIN_FACE_SIZE),
        )
        return [to_box(row) for row in faces]


class ExhaustiveHaar:
    """The same cascade at full resolution, 5 % pyramid steps, faces from the 24 px window up: what Haar finds at
    any cost (on the synthetic clips it finds every findable face in a sample of frames, and many false ones)."""

    name = "exhaustive Haar"

    def __init__(self, min_neighbors: int = EXHAUSTIVE_MIN_NEIGHBORS) -> None:
        self._cascade = load_cascade(None)
        self._min_neighbors = min_neighbors

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        faces = self._cascade.detectMultiScale(
            to_gray(frame_bgr),
            scaleFactor=EXHAUSTIVE_SCALE_FACTOR,
            minNeighbors=self._min_neighbors,
            minSize=(EXHAUSTIVE_MIN_SIZE, EXHAUSTIVE_MIN_SIZE),
        )
        # Raw groups, no clean-up: dropping boxes inside larger ones would drop faces inside false positives.
        return [to_box(row) for row in faces]


def square_tiles(width: int, height: int) -> list[Box]:
    """Overlapping square tiles of side min(width, height) across the longer side (at least half overlap)."""
    side = min(width, height)
    along = max(width, height)
    count = max(int(np.ceil(2 * along / side)) - 1, 1)
    starts = np.linspace(0, along - side, count).round().astype(int)
    if width >= height:
        return [(int(start), 0, side, side) for start in starts]
    return [(0, int(start), side, side) for start in starts]


class ReferenceDetector:
    """BlazeFace (back model) on the whole frame and its tiles; merged by weighted NMS."""

    name = "reference (BlazeFace)"

    def __init__(self, min_score: float = REFERENCE_MIN_SCORE) -> None:
        self._model = BlazeFace(REFERENCE_VARIANT, min_score=min_score)

    def detections(self, frame_bgr: np.ndarray) -> list[Detection]:
        """Raw detections (BlazeFace convention, with keypoints and scores)."""
        height, width = frame_bgr.shape[:2]
        found = self._model.detect(frame_bgr)
        for tile in square_tiles(width, height):
            if tile != (0, 0, width, height):
                found.extend(self._model.detect(frame_bgr, tile))
        return weighted_nms(found)

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        return [to_haar_convention(detection.box, self._model.spec) for detection in self.detections(frame_bgr)]


def yaw_ratio(detection: Detection) -> float:
    """How far the nose sits from the eyes' midpoint, in eye distances (0 frontal, ~0.5 and more: turned)."""
    eye_a, eye_b, nose = detection.keypoints[0], detection.keypoints[1], detection.keypoints[2]
    eye_distance = float(np.linalg.norm(eye_b - eye_a)) or 1.0
    return abs(float(nose[0] - (eye_a[0] + eye_b[0]) / 2.0)) / eye_distance
