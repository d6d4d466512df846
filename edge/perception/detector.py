"""Face detection with OpenCV's Haar cascade, made cheap for video.

Two ideas keep the cost low on a small CPU:

* whole-frame detection runs on a downscaled grey frame (``detect_scale``),
  and boxes are mapped back to full-resolution pixels;
* between whole-frame detections, only a region around each tracked face is
  searched, resized so the face is ~62 px wide, and only for face sizes next
  to the tracked one. A face moves little between two frames, so a tiny image
  and three pyramid scales suffice, instead of every scale over the whole
  frame (~3 ms per face instead of ~22 ms for a 596x336 frame, on one core).

A whole-frame detection still runs every ``full_detect_every_n`` frames (to
pick up new faces), when nothing is tracked (every ``idle_detect_every_n``
frames), and right after a tracked face was lost in its region.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edge.perception.boxes import Box, clip_box, expand_box, offset_box, remove_duplicates, remove_nested, scale_box
from edge.perception.settings import DetectionSettings
# The whole-frame search and the cascade's loading are shared with the retraining job's import.
from runtime.faces import (  # noqa: F401 (DetectorError, default_cascade_path, to_gray: re-exported)
    DetectorError,
    cascade_window_size,
    default_cascade_path,
    find_faces,
    load_cascade,
    resize_by,
    run_cascade,
    to_gray,
)


def pyramid_window_size(target: float, window_size: int, scale_factor: float) -> float:
    """The cascade window size ``window_size * scale_factor**k`` nearest to ``target`` (k >= 0).

    OpenCV tries exactly these sizes; putting the tracked face on one of them
    keeps the local search unbiased.
    """
    steps = max(round(np.log(max(target, window_size) / window_size) / np.log(scale_factor)), 0)
    return float(window_size * scale_factor**steps)


class FaceDetector:
    """Haar face detector with whole-frame and local (region-of-interest) search.

    ``detect`` chooses between the two and keeps the frame count needed to
    schedule whole-frame detections; ``detect_full`` and ``detect_in_regions``
    are the two searches on their own.
    """

    def __init__(self, settings: DetectionSettings | None = None) -> None:
        self.settings = settings or DetectionSettings()
        self._cascade = load_cascade(self.settings.cascade_path)
        self._window_size = cascade_window_size(self._cascade)
        self._roi_window_size = pyramid_window_size(
            self.settings.roi_face_size, self._window_size, self.settings.scale_factor
        )
        self._frames_since_full_detection: int | None = None
        self.last_search_was_full = False

    def reset(self) -> None:
        """Forget the schedule (new video source): the next frame gets a whole-frame detection."""
        self._frames_since_full_detection = None
        self.last_search_was_full = False

    def detect(self, gray: np.ndarray, tracked_boxes: Sequence[Box] = (), track_lost: bool = False) -> list[Box]:
        """Faces in a grey frame, as full-resolution boxes.

        ``tracked_boxes`` are the boxes of faces currently tracked (full
        resolution); ``track_lost`` says one of them was not found in the
        previous frame, which forces a whole-frame detection.
        """
        if self._needs_full_detection(tracked_boxes, track_lost):
            self._frames_since_full_detection = 0
            self.last_search_was_full = True
            return self.detect_full(gray)
        assert self._frames_since_full_detection is not None
        self._frames_since_full_detection += 1
        self.last_search_was_full = False
        # With nothing tracked (an idle frame between whole-frame searches) this finds nothing, at no cost.
        return self.detect_in_regions(gray, tracked_boxes)

    def _needs_full_detection(self, tracked_boxes: Sequence[Box], track_lost: bool) -> bool:
        if self._frames_since_full_detection is None or track_lost:
            return True
        if not tracked_boxes:
            return self._frames_since_full_detection + 1 >= self.settings.idle_detect_every_n
        return self._frames_since_full_detection + 1 >= self.settings.full_detect_every_n

    def detect_full(self, gray: np.ndarray) -> list[Box]:
        """Search the whole (downscaled) frame at every allowed face size."""
        settings = self.settings
        return find_faces(
            self._prepared(gray),
            self._cascade,
            scale_factor=settings.scale_factor,
            min_neighbors=settings.min_neighbors,
            min_face_size=settings.min_face_size,
            max_face_size=settings.max_face_size,
            detect_scale=settings.detect_scale,
        )

    def detect_in_regions(self, gray: np.ndarray, tracked_boxes: Sequence[Box]) -> list[Box]:
        """Search only around each tracked face, only for sizes close to the tracked size."""
        image = self._prepared(gray)
        found: list[Box] = []
        for tracked_box in tracked_boxes:
            found.extend(self._search_around(image, tracked_box))
        return remove_nested(remove_duplicates(found))

    def _search_around(self, gray: np.ndarray, face: Box) -> list[Box]:
        """Detections (full-resolution pixels) in the region around one tracked face.

        The region is resized so the tracked face is exactly one of the
        cascade's pyramid window sizes near ``roi_face_size``: the cost is then
        the same for a near and a far face, and the sizes tried (that window
        and its neighbours within ``roi_size_tolerance``) are symmetric around
        the tracked size, so the box neither grows nor shrinks frame after frame.
        """
        frame_height, frame_width = gray.shape[:2]
        region = clip_box(expand_box(face, self.settings.roi_margin), frame_width, frame_height)
        tracked_side = max(face[2], face[3])
        if region is None or tracked_side < 1:
            return []
        # Small faces are enlarged too: the same window alignment, and a tiny region costs little.
        resize_factor = self._roi_window_size / tracked_side
        tolerance = self.settings.roi_size_tolerance
        min_side = max(int(np.floor(self._roi_window_size * (1.0 - tolerance))), self._window_size)
        max_side = int(np.ceil(self._roi_window_size * (1.0 + tolerance)))
        # The configured size limits still apply (in the resized region's pixels), with the same
        # tolerance: a tracked face at the limit is not lost for jittering 1 px below it.
        min_side = max(min_side, int(np.ceil(self.settings.min_face_size * (1.0 - tolerance) * resize_factor)))
        if self.settings.max_face_size is not None:
            max_side = min(max_side, int(self.settings.max_face_size * (1.0 + tolerance) * resize_factor))
        region_x, region_y, region_width, region_height = region
        region_pixels = gray[region_y : region_y + region_height, region_x : region_x + region_width]
        sub_image = resize_by(region_pixels, resize_factor)
        if min(sub_image.shape[:2]) < min_side or max_side < min_side:
            return []
        detections = self._run_cascade(sub_image, min_side, max_side, self.settings.roi_min_neighbors)
        return [offset_box(scale_box(box, 1.0 / resize_factor), region_x, region_y) for box in detections]

    def _run_cascade(self, image: np.ndarray, min_side: int, max_side: int, min_neighbors: int) -> list[Box]:
        return run_cascade(self._cascade, image, self.settings.scale_factor, min_neighbors, min_side, max_side)

    def _prepared(self, gray: np.ndarray) -> np.ndarray:
        if self.settings.equalize_hist:
            # Equalise the whole frame, not each region, so both searches see the same pixels.
            return cv2.equalizeHist(gray)
        return gray
