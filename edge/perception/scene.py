"""Where the picture changed: scene cuts and changed regions, from a tiny grey thumbnail (~0.1 ms a frame).

A new face can only appear where pixels change, so the detector need not
search the whole frame every frame to find faces quickly: it searches where
the picture changed since that place was last searched, and the whole frame
at a scene cut.

* The thumbnail is the grey frame shrunk ``cell`` times with INTER_AREA
  (each thumbnail pixel is the mean of a cell x cell block), which also
  averages away sensor noise and JPEG blocking.
* A *scene cut* is a frame whose thumbnail differs from the previous one by a
  large mean absolute difference, or whose grey histogram moved a lot (a pan
  keeps the histogram; a cut to another picture does not). On the face set's
  clips, cuts give >= 37 grey levels and >= 0.38 histogram distance, pans
  and faces walking in <= 15 and <= 0.1.
* *Changed regions* compare the thumbnail with what it was when each place
  was last searched (``mark_searched``), not with the previous frame: a slow
  change (a face turning towards the camera, a fade) adds up until it is
  searched.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.perception.boxes import Box, clip_box

HISTOGRAM_BINS = 32


def histogram(gray: np.ndarray) -> np.ndarray:
    """Normalised grey histogram (sums to 1)."""
    counts = cv2.calcHist([gray], [0], None, [HISTOGRAM_BINS], [0, 256]).ravel()
    return counts / max(float(counts.sum()), 1.0)


class ChangeMap:
    """Per frame: is this a scene cut, and which regions changed since they were last searched."""

    def __init__(self, cell: int, change_threshold: float, cut_mean_difference: float,
                 cut_histogram_distance: float) -> None:
        self.cell = cell
        self.change_threshold = change_threshold
        self.cut_mean_difference = cut_mean_difference
        self.cut_histogram_distance = cut_histogram_distance
        self.reset()

    def reset(self) -> None:
        self._thumbnail: np.ndarray | None = None
        self._previous: np.ndarray | None = None
        self._previous_histogram: np.ndarray | None = None
        self._searched: np.ndarray | None = None
        self._frame_size = (0, 0)
        self.cut = False

    def update(self, gray: np.ndarray) -> bool:
        """Take a new frame; returns (and keeps in ``cut``) whether it starts a new scene."""
        height, width = gray.shape[:2]
        size = (max(width // self.cell, 1), max(height // self.cell, 1))
        thumbnail = cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.int16)
        frame_histogram = histogram(thumbnail.astype(np.uint8))
        first = self._previous is None or self._previous.shape != thumbnail.shape
        self.cut = first or self._is_cut(thumbnail, frame_histogram)
        self._previous, self._previous_histogram = thumbnail, frame_histogram
        self._thumbnail, self._frame_size = thumbnail, (width, height)
        if first:
            self._searched = thumbnail.copy()
        return self.cut

    def highlights(self) -> float:
        """The grey level 99 % of the last frame is darker than (on the thumbnail: noise averaged away)."""
        if self._thumbnail is None:
            return 255.0
        return float(np.percentile(self._thumbnail, 99))

    def _is_cut(self, thumbnail: np.ndarray, frame_histogram: np.ndarray) -> bool:
        mean_difference = float(np.abs(thumbnail - self._previous).mean())
        histogram_distance = 0.5 * float(np.abs(frame_histogram - self._previous_histogram).sum())
        return mean_difference >= self.cut_mean_difference or histogram_distance >= self.cut_histogram_distance

    def mark_searched(self, region: Box | None = None) -> None:
        """The region (None: the whole frame) was searched in this frame: it is unchanged from now on."""
        if self._thumbnail is None or self._searched is None:
            return
        if region is None:
            self._searched = self._thumbnail.copy()
            return
        x0, y0, x1, y1 = self._thumbnail_span(region, inner=True)
        self._searched[y0:y1, x0:x1] = self._thumbnail[y0:y1, x0:x1]

    def changed_regions(self, min_side: int) -> list[Box]:
        """Bounding boxes (frame pixels) of the places that changed since last searched, each at least
        ``min_side`` wide and grown by half its size on every side (a face must fit in the searched region)."""
        if self._thumbnail is None or self._searched is None:
            return []
        changed = (np.abs(self._thumbnail - self._searched) > self.change_threshold).astype(np.uint8)
        if not changed.any():
            return []
        # Join changed cells that are close (a moving face changes its outline more than its middle).
        joined = cv2.dilate(changed, np.ones((3, 3), np.uint8))
        count, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
        width, height = self._frame_size
        regions = []
        for x, y, w, h, _ in stats[1:count]:
            region = self._grown((x * self.cell, y * self.cell, w * self.cell, h * self.cell), min_side)
            clipped = clip_box(region, width, height)
            if clipped is not None:
                regions.append(clipped)
        return regions

    def changed_fraction(self) -> float:
        """Share of the frame changed since last searched."""
        if self._thumbnail is None or self._searched is None:
            return 1.0
        return float((np.abs(self._thumbnail - self._searched) > self.change_threshold).mean())

    @staticmethod
    def _grown(box: Box, min_side: int) -> Box:
        x, y, w, h = box
        grow_x = max(w // 2, (min_side - w + 1) // 2)
        grow_y = max(h // 2, (min_side - h + 1) // 2)
        return x - grow_x, y - grow_y, w + 2 * grow_x, h + 2 * grow_y

    def _thumbnail_span(self, region: Box, inner: bool) -> tuple[int, int, int, int]:
        """Thumbnail index range of a frame region; ``inner`` keeps only cells wholly inside it."""
        x, y, w, h = region
        if inner:
            x0, y0 = -(-x // self.cell), -(-y // self.cell)
            x1, y1 = (x + w) // self.cell, (y + h) // self.cell
        else:
            x0, y0 = x // self.cell, y // self.cell
            x1, y1 = -(-(x + w) // self.cell), -(-(y + h) // self.cell)
        rows, columns = self._thumbnail.shape
        return max(x0, 0), max(y0, 0), min(max(x1, 0), columns), min(max(y1, 0), rows)
