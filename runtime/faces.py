"""Finding a face in a grey image and cutting it out for the model: the edge's way, for everyone.

The edge's perception (``edge.perception``) detects and crops faces with these
functions, and so does the retraining job's import of labelled pictures
(``emq-retrain import``), so an imported face is cut exactly like a face the
edge saw.  Boxes are ``(x, y, width, height)`` in integer pixels.

* :func:`find_faces`: OpenCV's Haar cascade over the whole (downscaled) image,
  boxes mapped back to full resolution, boxes nested in a larger one dropped;
* :func:`crop_face`: the squared box grown by a margin, parts outside the
  image replicating its edge pixels.

Only numpy and OpenCV.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

Box = tuple[int, int, int, int]
DEFAULT_CASCADE_FILE = "haarcascade_frontalface_default.xml"


class DetectorError(RuntimeError):
    """The detector could not be loaded (cascade or model file missing or invalid)."""


# -- boxes -------------------------------------------------------------------------------------


def to_box(values: Iterable[float]) -> Box:
    """Round any 4 numbers (e.g. an OpenCV int32 row) to a plain-int box."""
    x, y, width, height = (int(round(float(value))) for value in values)
    return x, y, width, height


def square_box(box: Box) -> Box:
    """Grow the shorter side so the box is square, keeping its centre."""
    x, y, width, height = box
    side = max(width, height)
    return x - (side - width) // 2, y - (side - height) // 2, side, side


def expand_box(box: Box, margin: float) -> Box:
    """Grow a box by ``margin`` times its own width/height on every side."""
    x, y, width, height = box
    grow_x = int(round(width * margin))
    grow_y = int(round(height * margin))
    return x - grow_x, y - grow_y, width + 2 * grow_x, height + 2 * grow_y


def scale_box(box: Box, factor: float) -> Box:
    """Multiply every coordinate by ``factor`` (map between detection and frame resolution)."""
    return to_box(value * factor for value in box)


def box_area(box: Box) -> int:
    return max(box[2], 0) * max(box[3], 0)


def intersection_area(first: Box, second: Box) -> int:
    width = min(first[0] + first[2], second[0] + second[2]) - max(first[0], second[0])
    height = min(first[1] + first[3], second[1] + second[3]) - max(first[1], second[1])
    return max(width, 0) * max(height, 0)


def remove_nested(boxes: Sequence[Box], containment_threshold: float = 0.6) -> list[Box]:
    """Drop a box lying mostly (>= threshold of its area) inside a larger one.

    The Haar cascade often fires on a mouth or eye region inside a face; a real
    face is practically never hidden inside another face's box.
    """
    kept: list[Box] = []
    for box in boxes:
        area = box_area(box)
        if area == 0:
            continue
        inside_larger = any(
            box_area(other) > area and intersection_area(box, other) >= containment_threshold * area
            for other in boxes
        )
        if not inside_larger:
            kept.append(box)
    return kept


def largest_box(boxes: Sequence[Box]) -> Box | None:
    """The box with the largest area (the first of equals), None when there is none."""
    return max(boxes, key=box_area, default=None)


# -- images ------------------------------------------------------------------------------------


def to_gray(frame_bgr: np.ndarray) -> np.ndarray:
    """Grey version of a BGR, BGRA or already grey image."""
    if frame_bgr.ndim == 2:
        return frame_bgr
    if frame_bgr.shape[2] == 4:
        return cv2.cvtColor(frame_bgr, cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)


def resize_by(gray: np.ndarray, factor: float) -> np.ndarray:
    """Resize by ``factor``: INTER_AREA to shrink (averages pixels, no aliasing), INTER_LINEAR to enlarge."""
    if factor == 1.0:
        return gray
    height, width = gray.shape[:2]
    size = (max(int(round(width * factor)), 1), max(int(round(height * factor)), 1))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA if factor < 1.0 else cv2.INTER_LINEAR)


# -- detection ---------------------------------------------------------------------------------


def default_cascade_path() -> str:
    """Path of the frontal-face cascade bundled with opencv-python."""
    return cv2.data.haarcascades + DEFAULT_CASCADE_FILE


def load_cascade(path: str | None) -> cv2.CascadeClassifier:
    """Load a Haar cascade, failing loudly: an empty classifier would silently find nothing."""
    cascade_path = path or default_cascade_path()
    cascade = cv2.CascadeClassifier(cascade_path)
    if cascade.empty():
        raise DetectorError(f"cannot load Haar cascade {cascade_path!r}")
    return cascade


def cascade_window_size(cascade: cv2.CascadeClassifier) -> int:
    """Side of the cascade's detection window (24 px for the frontal-face cascades)."""
    return int(min(cascade.getOriginalWindowSize())) or 24


def run_cascade(cascade: cv2.CascadeClassifier, gray: np.ndarray, scale_factor: float, min_neighbors: int,
                min_side: int, max_side: int) -> list[Box]:
    """Raw Haar detections with sides from ``min_side`` to ``max_side`` pixels."""
    detections = cascade.detectMultiScale(
        gray, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(min_side, min_side), maxSize=(max_side, max_side)
    )
    return [to_box(row) for row in detections]


def find_faces(
    gray: np.ndarray,
    cascade: cv2.CascadeClassifier,
    *,
    scale_factor: float,
    min_neighbors: int,
    min_face_size: int,
    max_face_size: int | None,
    detect_scale: float,
) -> list[Box]:
    """Faces in a whole grey image, searched at every allowed size on a copy downscaled by ``detect_scale``.

    Face sizes are in full-resolution pixels, and so are the boxes returned.
    """
    window = cascade_window_size(cascade)
    image = resize_by(gray, detect_scale)
    min_side = max(int(round(min_face_size * detect_scale)), window)
    max_side = int(np.ceil(max(image.shape[:2])))
    if max_face_size is not None:
        max_side = max(min(int(np.ceil(max_face_size * detect_scale)), max_side), window)
    boxes = remove_nested(run_cascade(cascade, image, scale_factor, min_neighbors, min_side, max_side))
    return [scale_box(box, 1.0 / detect_scale) for box in boxes]


# -- cropping ----------------------------------------------------------------------------------


# The crop the emotion model sees, as bench/bench_crops.py calibrated it on FER2013 faces placed in
# real frames (README "Face crops and flip TTA"): about the Haar box itself, FER2013's own framing.
# The edge's settings and the retraining job's import both default to these, so faces are cut alike.
CROP_MARGIN_X = 0.0
CROP_MARGIN_Y = -0.03
CROP_OFFSET_Y = 0.02


def crop_rectangle(box: Box, margin_x: float, margin_y: float, offset_y: float) -> Box:
    """The rectangle cut around a face box for the emotion model (it may reach beyond the frame).

    The box is squared first (so every measure below is relative to one side
    ``s``), then grown by ``margin_x * s`` left and right and ``margin_y * s``
    above and below, and moved down by ``offset_y * s`` (negative moves it up).
    With ``margin_x == margin_y`` the crop is square; otherwise resizing it to
    the model's square input stretches the face, as Arriaga's pixel offsets did.
    """
    x, y, side, _ = square_box(box)
    grow_x = int(round(side * margin_x))
    grow_y = int(round(side * margin_y))
    shift_y = int(round(side * offset_y))
    return x - grow_x, y - grow_y + shift_y, side + 2 * grow_x, side + 2 * grow_y


def crop_face(gray: np.ndarray, box: Box, margin: float, margin_y: float | None = None, offset_y: float = 0.0) -> np.ndarray:
    """Grey crop around a face box (:func:`crop_rectangle`); ``margin_y`` None means ``margin`` (square)."""
    vertical_margin = margin if margin_y is None else margin_y
    return cut_out(gray, crop_rectangle(box, margin, vertical_margin, offset_y))


def cut_out(gray: np.ndarray, rectangle: Box) -> np.ndarray:
    """The pixels of ``rectangle``; the parts outside the frame replicate its edge pixels."""
    x, y, width, height = rectangle
    frame_height, frame_width = gray.shape[:2]
    left, top = max(x, 0), max(y, 0)
    right, bottom = min(x + width, frame_width), min(y + height, frame_height)
    if right <= left or bottom <= top:
        raise ValueError(f"crop {rectangle} lies outside the {frame_width}x{frame_height} frame")
    inside = gray[top:bottom, left:right]
    pads = (top - y, y + height - bottom, left - x, x + width - right)
    if not any(pads):
        return inside
    return cv2.copyMakeBorder(inside, *pads, borderType=cv2.BORDER_REPLICATE)