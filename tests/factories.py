"""Builders of valid messages for tests (real PNG crops, real probability vectors)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone

import cv2
import numpy as np

from contract.messages import Box, Face, Probabilities, Result, make_result


def png_crop_b64(seed: int = 0) -> str:
    grey = np.random.default_rng(seed).integers(0, 255, (64, 64), dtype=np.uint8)
    ok, png = cv2.imencode(".png", grey)
    assert ok
    return base64.b64encode(png.tobytes()).decode()


def face(track_id: int = 1, box=(10, 20, 60, 60), top: int = 3, crop: bool = True, seed: int = 0) -> Face:
    rng = np.random.default_rng(seed + track_id)
    values = rng.random(7) * 0.1
    values[top] = 1.0
    values = values / values.sum()
    probabilities = Probabilities.from_sequence(values)
    label, confidence = probabilities.top()
    x, y, w, h = box
    return Face(
        box=Box(x=x, y=y, w=w, h=h),
        probabilities=probabilities,
        label=label,
        confidence=confidence,
        track_id=track_id,
        crop_png_b64=png_crop_b64(seed + track_id) if crop else None,
    )


def result(
    device_id: str = "cam-a", seq: int = 0, faces: list[Face] | None = None, frame_number: int | None = None,
    epoch: str | None = None,
) -> Result:
    """A valid result; a fresh epoch per call unless given, so two calls never share an identity."""
    return make_result(
        device_id=device_id,
        epoch=epoch or uuid.uuid4().hex[:16],
        seq=seq,
        source="file:woman2.mp4",
        video_file="woman2.mp4",
        frame_number=seq if frame_number is None else frame_number,
        captured_at=datetime.now(timezone.utc),
        frame_width=640,
        frame_height=480,
        model_name="mini_xception_fer2013",
        model_version="1.0.0",
        faces=[face()] if faces is None else faces,
    )


def result_dict(**kwargs) -> dict:
    return json.loads(result(**kwargs).to_json())
