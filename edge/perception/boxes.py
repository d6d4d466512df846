"""Pure helpers on axis-aligned boxes ``(x, y, width, height)`` in integer pixels.

No state and no OpenCV: detector, tracker and classifier share them, and
tests can check them in isolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[int, int, int, int]


def to_box(values: Sequence[float]) -> Box:
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


def clip_box(box: Box, frame_width: int, frame_height: int) -> Box | None:
    """The part of a box inside the frame, or None if nothing of it is."""
    x, y, width, height = box
    left, top = max(x, 0), max(y, 0)
    right, bottom = min(x + width, frame_width), min(y + height, frame_height)
    if right <= left or bottom <= top:
        return None
    return left, top, right - left, bottom - top


def scale_box(box: Box, factor: float) -> Box:
    """Multiply every coordinate by ``factor`` (map between detection and frame resolution)."""
    return to_box(value * factor for value in box)


def offset_box(box: Box, delta_x: int, delta_y: int) -> Box:
    """Move a box (map a detection inside a sub-image back to the whole image)."""
    x, y, width, height = box
    return x + delta_x, y + delta_y, width, height


def box_area(box: Box) -> int:
    return max(box[2], 0) * max(box[3], 0)


def intersection_over_union(first: Box, second: Box) -> float:
    """IoU of two boxes: 0 when disjoint, 1 when identical."""
    intersection = _intersection_area(first, second)
    union = box_area(first) + box_area(second) - intersection
    return intersection / union if union > 0 else 0.0


def iou_matrix(rows: Sequence[Box], columns: Sequence[Box]) -> np.ndarray:
    """IoU of every pair, shape (len(rows), len(columns)); vectorised for many faces."""
    if not rows or not columns:
        return np.zeros((len(rows), len(columns)), dtype=np.float64)
    first = np.asarray(rows, dtype=np.float64)[:, None, :]
    second = np.asarray(columns, dtype=np.float64)[None, :, :]
    left = np.maximum(first[..., 0], second[..., 0])
    top = np.maximum(first[..., 1], second[..., 1])
    right = np.minimum(first[..., 0] + first[..., 2], second[..., 0] + second[..., 2])
    bottom = np.minimum(first[..., 1] + first[..., 3], second[..., 1] + second[..., 3])
    intersection = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = first[..., 2] * first[..., 3] + second[..., 2] * second[..., 3] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def greedy_matches(scores: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, column) taken best score first, each row and column at most once, score >= threshold.

    Greedy rather than optimal (Hungarian) assignment: with a handful of faces
    that barely overlap, both give the same pairs, and greedy needs no SciPy.
    """
    if scores.size == 0:
        return []
    order = np.argsort(scores, axis=None)[::-1]
    used_rows: set[int] = set()
    used_columns: set[int] = set()
    matches: list[tuple[int, int]] = []
    for flat_index in order:
        row, column = divmod(int(flat_index), scores.shape[1])
        if scores[row, column] < threshold:
            break
        if row in used_rows or column in used_columns:
            continue
        used_rows.add(row)
        used_columns.add(column)
        matches.append((row, column))
    return matches


def remove_duplicates(boxes: Sequence[Box], overlap_threshold: float = 0.5) -> list[Box]:
    """Drop a box that overlaps an earlier kept one by IoU >= threshold (overlapping search regions)."""
    kept: list[Box] = []
    for box in boxes:
        if all(intersection_over_union(box, other) < overlap_threshold for other in kept):
            kept.append(box)
    return kept


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
            box_area(other) > area and _intersection_area(box, other) >= containment_threshold * area
            for other in boxes
        )
        if not inside_larger:
            kept.append(box)
    return kept


def _intersection_area(first: Box, second: Box) -> int:
    width = min(first[0] + first[2], second[0] + second[2]) - max(first[0], second[0])
    height = min(first[1] + first[3], second[1] + second[3]) - max(first[1], second[1])
    return max(width, 0) * max(height, 0)
