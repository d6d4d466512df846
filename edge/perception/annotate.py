"""Draw each face's box, label and probability on the frame.

``draw_faces`` draws IN PLACE on the array it is given and returns that same
array; ``annotate`` applies ``AnnotationSettings.draw_on_copy`` (default: on a
copy, so the caller's frame stays clean). Line thickness and font size scale
with the frame height, so labels stay readable from 240p to 1080p.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

from edge.perception.boxes import Box
from edge.perception.settings import AnnotationSettings

FONT = cv2.FONT_HERSHEY_SIMPLEX
# The automatic sizes are given for a 480-line frame and scaled linearly.
REFERENCE_FRAME_HEIGHT = 480
REFERENCE_FONT_SCALE = 0.5
REFERENCE_BOX_THICKNESS = 2
# Below this the Hershey font becomes unreadable, whatever the frame size.
MINIMUM_FONT_SCALE = 0.35
# A label may be this much wider than its face box before its font shrinks (to at
# most half), so neighbouring small faces in a big frame do not hide each other.
MAXIMUM_LABEL_WIDTH_TO_BOX = 1.5


class DrawableFace(Protocol):
    """What the annotator needs of a face result."""

    box: Box
    label: str
    confidence: float
    track_id: int
    smoothed_label: str | None


def font_scale_for(frame_height: int, settings: AnnotationSettings) -> float:
    if settings.font_scale is not None:
        return settings.font_scale
    return max(REFERENCE_FONT_SCALE * frame_height / REFERENCE_FRAME_HEIGHT, MINIMUM_FONT_SCALE)


def box_thickness_for(frame_height: int, settings: AnnotationSettings) -> int:
    if settings.box_thickness is not None:
        return settings.box_thickness
    return max(int(round(REFERENCE_BOX_THICKNESS * frame_height / REFERENCE_FRAME_HEIGHT)), 1)


def label_text(face: DrawableFace, settings: AnnotationSettings) -> str:
    """E.g. ``happy 87% #3``; shows the smoothed label when smoothing is on, as it flickers less."""
    parts = [face.smoothed_label or face.label]
    if settings.show_probability:
        parts.append(f"{face.confidence * 100:.0f}%")
    if settings.show_track_id:
        parts.append(f"#{face.track_id}")
    return " ".join(parts)


def fit_font_scale(text: str, box_width: int, font_scale: float) -> float:
    """Shrink the font (down to half, never below the readable minimum) when the label is much wider than the box."""
    text_width = cv2.getTextSize(text, FONT, font_scale, 1)[0][0]
    limit = MAXIMUM_LABEL_WIDTH_TO_BOX * box_width
    if text_width <= limit:
        return font_scale
    return max(font_scale * limit / text_width, font_scale / 2, MINIMUM_FONT_SCALE)


def draw_label(frame: np.ndarray, text: str, box: Box, font_scale: float, settings: AnnotationSettings) -> None:
    """Text on a filled background above the box, or inside its top edge when there is no room above."""
    if settings.font_scale is None:
        font_scale = fit_font_scale(text, box[2], font_scale)
    text_thickness = max(int(round(font_scale * 2)), 1)
    (text_width, text_height), baseline = cv2.getTextSize(text, FONT, font_scale, text_thickness)
    padding = max(int(round(text_height * 0.3)), 2)
    label_height = text_height + baseline + 2 * padding
    x, y = box[0], box[1]
    top = y - label_height if y - label_height >= 0 else y
    cv2.rectangle(
        frame, (x, top), (x + text_width + 2 * padding, top + label_height), settings.label_background_color, cv2.FILLED
    )
    origin = (x + padding, top + padding + text_height)
    cv2.putText(frame, text, origin, FONT, font_scale, settings.text_color, text_thickness, cv2.LINE_AA)


def draw_faces(frame: np.ndarray, faces: Sequence[DrawableFace], settings: AnnotationSettings) -> np.ndarray:
    """Draw every face on ``frame`` in place and return it."""
    frame_height = frame.shape[0]
    thickness = box_thickness_for(frame_height, settings)
    font_scale = font_scale_for(frame_height, settings)
    for face in faces:
        x, y, width, height = face.box
        cv2.rectangle(frame, (x, y), (x + width - 1, y + height - 1), settings.box_color, thickness)
        draw_label(frame, label_text(face, settings), face.box, font_scale, settings)
    return frame


def annotate(frame: np.ndarray, faces: Sequence[DrawableFace], settings: AnnotationSettings) -> np.ndarray:
    """Annotated frame: a copy when ``settings.draw_on_copy`` (default), else ``frame`` itself, drawn on."""
    target = frame.copy() if settings.draw_on_copy else frame
    return draw_faces(target, faces, settings)
