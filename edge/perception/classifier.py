"""Emotion classification of every face of a frame in one model call.

The crop (``crop_face``) squares the Haar box, adds margins and a vertical
offset, all as fractions of the face side so they mean the same at every face
size, and pads with replicated edge pixels where the crop leaves the frame.
The defaults were calibrated (``bench/bench_crops.py``) so that a crop of a
face in a real frame looks like the tight FER2013 faces the model learnt
from; the old default, the ``fer`` package's 10 px (~8 % of a typical face),
cost accuracy (README, "Face crops").

Resizing to 64x64 and scaling to [-1, 1] are ``runtime.preprocess``, shared
with training, so the edge model sees the same pixels it was trained on.

With ``flip_tta`` each face and its mirror image go through the model in one
batch of 2N and the two probability rows are averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from contract.emotions import NUM_EMOTIONS
from edge.perception.boxes import Box
from edge.perception.settings import ClassificationSettings
from runtime.faces import crop_face, cut_out  # noqa: F401 (cut_out re-exported) shared with the import: faces cut alike
from runtime.preprocess import FACE_SIZE, normalize_faces, resize_faces


@runtime_checkable
class EmotionModel(Protocol):
    """Anything with ``predict(batch float32 (N, 64, 64, 1) in [-1, 1]) -> (N, 7) probabilities``.

    ``runtime.tflite_runner.TFLiteEmotionModel`` is the production one.
    """

    def predict(self, normalized_batch: np.ndarray) -> np.ndarray: ...


PredictFunction = Callable[[np.ndarray], np.ndarray]


def predict_function_of(model: EmotionModel | PredictFunction) -> PredictFunction:
    """Accept a model object with ``predict`` or a bare predict callable."""
    predict = getattr(model, "predict", None)
    if callable(predict):
        return predict
    if callable(model):
        return model
    raise TypeError(f"{type(model).__name__} has no predict(batch) method and is not callable")


def predict_with_flip(predict: PredictFunction, normalized_batch: np.ndarray) -> np.ndarray:
    """Mean of the probabilities of each face and of its mirror image, from one model call on 2N faces."""
    count = len(normalized_batch)
    mirrored = normalized_batch[:, :, ::-1, :]
    probabilities = np.asarray(predict(np.concatenate([normalized_batch, mirrored])), dtype=np.float32)
    if probabilities.shape != (2 * count, NUM_EMOTIONS):
        raise ValueError(f"model returned shape {probabilities.shape}, expected ({2 * count}, {NUM_EMOTIONS})")
    return (probabilities[:count] + probabilities[count:]) / np.float32(2.0)


class FaceClassifier:
    """Crops, preprocesses and classifies all faces of a frame in a single batch."""

    def __init__(self, model: EmotionModel | PredictFunction, settings: ClassificationSettings | None = None) -> None:
        self._predict = predict_function_of(model)
        self.settings = settings or ClassificationSettings()

    def crops(self, gray: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """(N, 64, 64) uint8 grey faces, exactly what the model sees before scaling to [-1, 1]."""
        settings = self.settings
        raw_crops = [
            crop_face(gray, box, settings.crop_margin, settings.vertical_margin, settings.crop_offset_y) for box in boxes
        ]
        return resize_faces(raw_crops)

    def classify(self, gray: np.ndarray, boxes: Sequence[Box]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, 7) float32 and the 64x64 uint8 crops (N, 64, 64) of the faces in ``boxes``."""
        faces = self.crops(gray, boxes)
        if len(faces) == 0:
            return np.empty((0, NUM_EMOTIONS), dtype=np.float32), np.empty((0, FACE_SIZE, FACE_SIZE), np.uint8)
        return self.predict_faces(faces), faces

    def predict_faces(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities (N, 7) float32 of (N, 64, 64) uint8 grey faces, mirrored too when ``flip_tta`` is on."""
        normalized = normalize_faces(faces)
        if self.settings.flip_tta:
            return predict_with_flip(self._predict, normalized)
        probabilities = np.asarray(self._predict(normalized), dtype=np.float32)
        if probabilities.shape != (len(faces), NUM_EMOTIONS):
            raise ValueError(f"model returned shape {probabilities.shape}, expected ({len(faces)}, {NUM_EMOTIONS})")
        return probabilities
