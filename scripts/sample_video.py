"""A sample video for the demo, made from a portrait that a dependency ships.

Users do not have our test media, and model weights or media cannot be
downloaded at run time; matplotlib (already needed for plots) ships Grace
Hopper's portrait. The video slides and zooms it across a frame, with a
mirrored second copy part of the time, so detection, tracking (two ids)
and the dashboard have something real to show.

    python scripts/sample_video.py var/sample/demo.mp4
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT, FPS, SECONDS = 640, 360, 15, 12


class SampleUnavailable(RuntimeError):
    pass


def portrait_path() -> Path:
    try:
        import matplotlib
    except ImportError:
        raise SampleUnavailable("the sample video needs matplotlib (pip install matplotlib)") from None
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.exists():
        raise SampleUnavailable(f"{path} not found in this matplotlib")
    return path


def _background() -> np.ndarray:
    ramp = np.linspace(60, 140, WIDTH, dtype=np.uint8)
    return np.repeat(np.tile(ramp, (HEIGHT, 1))[:, :, None], 3, axis=2)


def _paste(canvas: np.ndarray, image: np.ndarray, left: int, top: int) -> None:
    height, width = image.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + width, WIDTH), min(top + height, HEIGHT)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = image[y0 - top:y1 - top, x0 - left:x1 - left]


def render_frame(portrait: np.ndarray, index: int, total: int) -> np.ndarray:
    phase = index / total
    scale = 0.55 + 0.1 * math.sin(2 * math.pi * phase)
    face = cv2.resize(portrait, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = _background()
    left = int(20 + 120 * (0.5 + 0.5 * math.sin(2 * math.pi * phase)))
    _paste(canvas, face, left, (HEIGHT - face.shape[0]) // 2)
    if 0.3 < phase < 0.8:  # a second, mirrored person for part of the clip
        _paste(canvas, cv2.flip(face, 1), WIDTH - face.shape[1] - 10, (HEIGHT - face.shape[0]) // 2 + 10)
    return canvas


def write_sample(path: Path, seconds: int = SECONDS) -> Path:
    """Write the sample video (idempotent: an existing file is kept)."""
    if path.exists() and path.stat().st_size > 0:
        return path
    portrait = cv2.imread(str(portrait_path()))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".partial.mp4")
    writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    total = seconds * FPS
    for index in range(total):
        writer.write(render_frame(portrait, index, total))
    writer.release()
    temporary.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the demo's sample video.")
    parser.add_argument("path", type=Path, nargs="?", default=Path("var/sample/demo.mp4"))
    args = parser.parse_args(argv)
    try:
        print(write_sample(args.path))
    except SampleUnavailable as error:
        print(f"sample: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
