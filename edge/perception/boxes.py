"""Pure helpers on axis-aligned boxes ``(x, y, width, height)`` in integer pixels.

No state and no OpenCV: detector, tracker and classifier share them, and
tests can check them in isolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.faces import (
    Box, box_area, crop_rectangle, expand_box, intersection_area, remove_nested, scale_box, square_box, to_box,
)

# The helpers the whole-image detection and the crop need live in runtime.faces (the retraining job's
# import cuts faces with them too); they are re-exported here for the rest of the edge.
__all__ = [
    "Box", "box_area", "clip_box", "crop_rectangle", "expand_box", "greedy_matches", "intersection_over_union", "iou_matrix",
    "offset_box", "remove_duplicates", "remove_nested", "remove_nested_around_known", "scale_box", "square_box", "to_box",
]


def clip_box(box: Box, frame_width: int, frame_height: int) -> Box | None:
    """The part of a box inside the frame, or None if nothing of it is."""
    x, y, width, height = box
    left, top = max(x, 0), max(y, 0)
    right, bottom = min(x + width, frame_width), min(y + height, frame_height)
    if right <= left or bottom <= top:
        return None
    return left, top, right - left, bottom - top


def offset_box(box: Box, delta_x: int, delta_y: int) -> Box:
    """Move a box (map a detection inside a sub-image back to the whole image)."""
    x, y, width, height = box
    return x + delta_x, y + delta_y, width, height


def intersection_over_union(first: Box, second: Box) -> float:
    """IoU of two boxes: 0 when disjoint, 1 when identical."""
    intersection = intersection_area(first, second)
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


def remove_nested_around_known(boxes: Sequence[Box], known: Sequence[Box], containment_threshold: float = 0.6) -> list[Box]:
    """``remove_nested``, except around faces already known (IoU >= 0.5 with a box of ``known``).

    A box that is a known face is never dropped for lying inside a larger unknown box; the larger box
    is dropped instead: at reduced resolution the cascade sometimes fires on a whole head with its hair
    and neck around a small face, and keeping the outer box replaced the face with a box twice its size.
    Of two known faces one inside the other, the inner one is kept: it is the face in front, and the
    outer one a face behind it (mostly covered) or a box that drifted onto the head in front.
    """
    is_known = [any(intersection_over_union(box, face) >= 0.5 for face in known) for box in boxes]
    faces = [box for box, flag in zip(boxes, is_known) if flag]
    kept = [box for box in boxes if not any(_holds(box, face, containment_threshold) for face in faces)]
    return remove_nested(kept, containment_threshold)


def _holds(outer: Box, inner: Box, containment_threshold: float) -> bool:
    """``outer`` is larger and holds at least ``containment_threshold`` of ``inner``'s area."""
    area = box_area(inner)
    return box_area(outer) > area and intersection_area(inner, outer) >= containment_threshold * area


def remove_duplicates(boxes: Sequence[Box], overlap_threshold: float = 0.5) -> list[Box]:
    """Drop a box that overlaps an earlier kept one by IoU >= threshold (overlapping search regions)."""
    kept: list[Box] = []
    for box in boxes:
        if all(intersection_over_union(box, other) < overlap_threshold for other in kept):
            kept.append(box)
    return kept
