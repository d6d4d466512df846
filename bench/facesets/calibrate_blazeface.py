"""Where the Haar cascade's box lies relative to each BlazeFace model's box (edge/perception/blazeface.py MODEL_SPECS).

    python bench/facesets/calibrate_blazeface.py

On frames of woman2.mp4 and test.mp4, justin.jpg and the group photo at half size, every BlazeFace
face that exhaustive Haar also boxed (most of the BlazeFace box inside the Haar box, a plausible size)
gives Haar's side / BlazeFace's side and the shift of Haar's centre, in BlazeFace box sides. The
medians (and the 10th/90th percentiles) are printed per model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.facesets.annotate_real import read_frames  # noqa: E402
from bench.facesets.photos import MEDIA  # noqa: E402
from bench.facesets.reference import ExhaustiveHaar  # noqa: E402
from edge.perception.blazeface import MODEL_SPECS, BlazeFace  # noqa: E402


def images() -> list[np.ndarray]:
    frames = read_frames(MEDIA / "woman2.mp4")[::8] + read_frames(MEDIA / "test.mp4")[::4]
    group = cv2.imread(str(MEDIA / "group_photo.jpg"))
    return frames + [cv2.imread(str(MEDIA / "justin.jpg")), cv2.resize(group, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)]


def offsets(model: BlazeFace, haar: ExhaustiveHaar, pictures: list[np.ndarray]) -> np.ndarray:
    rows = []
    for picture in pictures:
        haar_boxes = haar.detect(picture)
        for found in model.detect(picture):
            x, y, w, h = found.box
            side = max(w, h)
            for hx, hy, hw, hh in haar_boxes:
                inside = max(min(x + w, hx + hw) - max(x, hx), 0) * max(min(y + h, hy + hh) - max(y, hy), 0)
                if inside > 0.5 * w * h and 0.8 < hw / side < 1.6:
                    rows.append((hw / side, (hx + hw / 2 - x - w / 2) / side, (hy + hh / 2 - y - h / 2) / side))
    return np.array(rows)


def main() -> int:
    pictures, haar = images(), ExhaustiveHaar()
    for variant in MODEL_SPECS:
        rows = offsets(BlazeFace(variant), haar, pictures)
        median, low, high = np.median(rows, axis=0), np.percentile(rows, 10, axis=0), np.percentile(rows, 90, axis=0)
        print(f"{variant}: {len(rows)} faces; side ratio {median[0]:.3f}, shift ({median[1]:.3f}, {median[2]:.3f}); "
              f"p10 {np.round(low, 3).tolist()}, p90 {np.round(high, 3).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
