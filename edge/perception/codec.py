"""Image encoding for the wire: JPEG for annotated frames, PNG for 64x64 face crops."""

from __future__ import annotations

import cv2
import numpy as np


class EncodeError(RuntimeError):
    """OpenCV refused to encode the image."""


def fit_width(frame: np.ndarray, max_width: int | None) -> np.ndarray:
    """Shrink (never enlarge) to at most ``max_width`` pixels wide, keeping the aspect ratio."""
    if max_width is None or frame.shape[1] <= max_width:
        return frame
    if max_width < 1:
        raise ValueError(f"max_width must be at least 1, got {max_width}")
    height = max(int(round(frame.shape[0] * max_width / frame.shape[1])), 1)
    return cv2.resize(frame, (max_width, height), interpolation=cv2.INTER_AREA)


def encode_jpeg(frame: np.ndarray, quality: int = 80, max_width: int | None = None) -> bytes:
    """JPEG bytes of a BGR (or grey) frame, first shrunk to ``max_width`` if it is wider.

    Quality 80 is visually clean for a dashboard at a third of quality-95's size.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1..100, got {quality}")
    image = fit_width(frame, max_width)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise EncodeError(f"cannot encode a {image.shape} {image.dtype} image as JPEG")
    return encoded.tobytes()


def encode_png(gray: np.ndarray) -> bytes:
    """Greyscale PNG bytes of a 2-D uint8 image (the 64x64 crops attached for retraining)."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 grey image, got shape {gray.shape} dtype {gray.dtype}")
    ok, encoded = cv2.imencode(".png", gray)
    if not ok:
        raise EncodeError(f"cannot encode a {gray.shape} image as PNG")
    return encoded.tobytes()
