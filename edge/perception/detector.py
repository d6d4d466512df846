"""Face detection made cheap for video: a schedule of three searches over one of two detectors.

The searches (each backend implements all three):

* *whole frame*: every face size over the whole (downscaled) frame, the
  expensive one (~30 ms for 640x360 with Haar on a small core);
* *region*: the same, only inside a region of the frame;
* *around a tracked face*: a region 1.7 times the face, only for sizes next
  to the tracked one (~3 ms with Haar, the region resized so the face is ~62 px).

The schedule (``FaceDetector.detect``), per frame:

1. a whole-frame search on the first frame, at a scene cut (``scene.ChangeMap``:
   the picture changed as a whole), and every ``full_detect_every_n`` frames
   as a safety net (``idle_detect_every_n`` while nothing is tracked);
2. otherwise a search around each tracked face, and a region search where the
   picture changed since it was last searched (a face can only appear where
   pixels change): new faces are found in the frame they appear;
3. when most of the picture changed (a camera pan, a zoom), one whole-frame
   search instead of the regions, at most every ``busy_detect_every_n``
   frames: what changed meanwhile stays marked and is searched then.

The ``haar`` backend is OpenCV's frontal-face cascade on the grey frame (no
extra dependency); ``blazeface`` is MediaPipe's BlazeFace on LiteRT
(``edge.perception.blazeface``), on the colour frame.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

from edge.perception.boxes import (
    Box,
    box_area,
    clip_box,
    expand_box,
    intersection_over_union,
    offset_box,
    remove_duplicates,
    remove_nested,
    remove_nested_around_known,
    scale_box,
    to_box,
)
from edge.perception.scene import ChangeMap
from edge.perception.settings import DetectionSettings

# The cascade's loading and the grey/resize helpers are shared with the retraining job's import.
from runtime.faces import (  # noqa: F401 (DetectorError, default_cascade_path, to_gray: re-exported)
    DEFAULT_CASCADE_FILE,
    DetectorError,
    default_cascade_path,
    load_cascade,
    resize_by,
    to_gray,
)

def pyramid_window_size(target: float, window_size: int, scale_factor: float) -> float:
    """The cascade window size ``window_size * scale_factor**k`` nearest to ``target`` (k >= 0).

    OpenCV tries exactly these sizes; putting the tracked face on one of them
    keeps the local search unbiased.
    """
    steps = max(round(np.log(max(target, window_size) / window_size) / np.log(scale_factor)), 0)
    return float(window_size * scale_factor**steps)


OVERLAP_SUPPRESSION_IOU = 0.3

DARK_HYSTERESIS = 16.0  # grey levels above dark_highlights_below before a dark scene counts as lit again

FOLLOW_PATCH_SIDE = 32  # pixels: a face patch is compared at this size (enough for the shift, cheap)
FOLLOW_MIN_RESPONSE = 0.2  # phase-correlation peak below this: the picture changed too much to follow
FOLLOW_MIN_SIMILARITY = 0.7  # correlation of the patch with itself moved back (the same face: > 0.9)


def follow_patch(previous: np.ndarray, current: np.ndarray, box: Box) -> Box | None:
    """``box`` moved by the shift of its picture from ``previous`` to ``current``; None if not trackable.

    Both frames' patches at the box (grown by half on each side, so a moving face stays inside) are
    shrunk to 32 px and phase-correlated (Hanning window): the peak gives the shift, its height how
    much of the picture simply moved. A face that turned, was covered or left gives a low peak, and
    is then searched for as usual.
    """
    height, width = current.shape[:2]
    region = clip_box(expand_box(box, 0.5), width, height)
    if region is None or region[2] < 8 or region[3] < 8:
        return None
    x, y, w, h = region
    size = (FOLLOW_PATCH_SIDE, FOLLOW_PATCH_SIDE)
    before = cv2.resize(previous[y:y + h, x:x + w], size, interpolation=cv2.INTER_AREA).astype(np.float32)
    after = cv2.resize(current[y:y + h, x:x + w], size, interpolation=cv2.INTER_AREA).astype(np.float32)
    (shift_x, shift_y), response = cv2.phaseCorrelate(before, after, _hanning(FOLLOW_PATCH_SIDE))
    if response < FOLLOW_MIN_RESPONSE or not _same_picture(before, after, shift_x, shift_y):
        return None
    moved = (int(round(box[0] + shift_x * w / FOLLOW_PATCH_SIDE)), int(round(box[1] + shift_y * h / FOLLOW_PATCH_SIDE)), box[2], box[3])
    return clip_box(moved, width, height)


def _same_picture(before: np.ndarray, after: np.ndarray, shift_x: float, shift_y: float) -> bool:
    """Does ``after``, moved back by the shift, look like ``before`` (correlation of the middles)?

    The phase-correlation peak always points somewhere, even between unrelated pictures; this
    is the check that the patch really moved rather than changed.
    """
    back = np.float32([[1, 0, -shift_x], [0, 1, -shift_y]])
    aligned = cv2.warpAffine(after, back, after.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inner = slice(FOLLOW_PATCH_SIDE // 8, -FOLLOW_PATCH_SIDE // 8)
    a, b = before[inner, inner].ravel(), aligned[inner, inner].ravel()
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return norm > 0 and float((a * b).sum()) / norm >= FOLLOW_MIN_SIMILARITY


@functools.lru_cache(maxsize=4)
def _hanning(side: int) -> np.ndarray:
    return cv2.createHanningWindow((side, side), cv2.CV_32F)


def strongest_of_overlapping(boxes: list[Box], strengths: Sequence[float]) -> list[Box]:
    """Of boxes overlapping by IoU >= 0.3, keep the strongest (most raw cascade hits).

    OpenCV's grouping sometimes leaves two boxes on one face, shifted by a
    third of its side; two real faces practically never overlap that much.
    """
    order = sorted(range(len(boxes)), key=lambda index: -float(strengths[index]))
    kept: list[Box] = []
    for index in order:
        if all(intersection_over_union(boxes[index], other) < OVERLAP_SUPPRESSION_IOU for other in kept):
            kept.append(boxes[index])
    return kept


class SearchBackend(Protocol):
    """The three searches of a detector; boxes in full-resolution pixels, Haar convention."""

    def whole(self, gray: np.ndarray, color: np.ndarray | None) -> list[Box]: ...

    def region(self, gray: np.ndarray, color: np.ndarray | None, region: Box) -> list[Box]: ...

    def around(self, gray: np.ndarray, color: np.ndarray | None, face: Box, strict: bool = False) -> list[Box]: ...


class HaarSearch:
    """The searches with OpenCV's Haar cascade, on the grey frame."""

    def __init__(self, settings: DetectionSettings) -> None:
        self.settings = settings
        self._cascade = load_cascade(settings.cascade_path)
        self._window_size = int(min(self._cascade.getOriginalWindowSize())) or 24
        self._roi_window_size = pyramid_window_size(settings.roi_face_size, self._window_size, settings.scale_factor)

    def whole(self, gray: np.ndarray, color: np.ndarray | None = None) -> list[Box]:
        """Every allowed face size over the whole (downscaled) frame."""
        return self._search(self._prepared(gray), None)

    def region(self, gray: np.ndarray, color: np.ndarray | None, region: Box) -> list[Box]:
        """Every allowed face size inside ``region`` (frame pixels)."""
        return self._search(self._prepared(gray), region)

    def _search(self, gray: np.ndarray, region: Box | None) -> list[Box]:
        scale = self.settings.detect_scale
        left, top = 0, 0
        if region is not None:
            left, top, width, height = region
            gray = gray[top : top + height, left : left + width]
        image = resize_by(gray, scale)
        min_side = self._scaled_min_side()
        max_side = self._scaled_max_side(max(image.shape[:2]))
        if min(image.shape[:2]) < min_side:
            return []
        boxes = self._run_cascade(image, min_side, max_side, self.settings.min_neighbors)
        return [offset_box(scale_box(box, 1.0 / scale), left, top) for box in boxes]

    def around(self, gray: np.ndarray, color: np.ndarray | None, face: Box, strict: bool = False) -> list[Box]:
        """Detections (full-resolution pixels) in the region around one tracked face.

        ``strict`` uses ``confirm_min_neighbors`` instead of ``roi_min_neighbors``: the check of a face
        a whole-frame or region search has just found, before it is reported.

        The region is resized so the tracked face is exactly one of the
        cascade's pyramid window sizes near ``roi_face_size``: the cost is then
        the same for a near and a far face, and the sizes tried (that window
        and its neighbours within ``roi_size_tolerance``) are symmetric around
        the tracked size, so the box neither grows nor shrinks frame after frame.
        """
        gray = self._prepared(gray)
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
        # tolerance: a tracked face at the limit is not lost for jittering 1 px below it. A tracked face
        # may shrink below min_face_size (the region is resized anyway: it costs nothing more).
        smallest = self.settings.min_tracked_face_size or self.settings.min_face_size
        min_side = max(min_side, int(np.ceil(smallest * (1.0 - tolerance) * resize_factor)))
        if self.settings.max_face_size is not None:
            max_side = min(max_side, int(self.settings.max_face_size * (1.0 + tolerance) * resize_factor))
        region_x, region_y, region_width, region_height = region
        region_pixels = gray[region_y : region_y + region_height, region_x : region_x + region_width]
        sub_image = resize_by(region_pixels, resize_factor)
        if min(sub_image.shape[:2]) < min_side or max_side < min_side:
            return []
        min_neighbors = self.settings.confirm_min_neighbors if strict else self.settings.roi_min_neighbors
        detections = self._run_cascade(sub_image, min_side, max_side, min_neighbors)
        return [offset_box(scale_box(box, 1.0 / resize_factor), region_x, region_y) for box in detections]

    def _run_cascade(self, image: np.ndarray, min_side: int, max_side: int, min_neighbors: int) -> list[Box]:
        detections, neighbours = self._cascade.detectMultiScale2(
            image,
            scaleFactor=self.settings.scale_factor,
            minNeighbors=min_neighbors,
            minSize=(min_side, min_side),
            maxSize=(max_side, max_side),
        )
        return strongest_of_overlapping([to_box(row) for row in detections], list(neighbours))

    def _prepared(self, gray: np.ndarray) -> np.ndarray:
        if self.settings.equalize_hist:
            # Equalise the whole frame, not each region, so every search sees the same pixels.
            return cv2.equalizeHist(gray)
        return gray

    def _scaled_min_side(self) -> int:
        scaled = int(round(self.settings.min_face_size * self.settings.detect_scale))
        return max(scaled, self._window_size)

    def _scaled_max_side(self, upper_bound: float) -> int:
        if self.settings.max_face_size is None:
            return int(np.ceil(upper_bound))
        scaled = int(np.ceil(self.settings.max_face_size * self.settings.detect_scale))
        return max(min(scaled, int(np.ceil(upper_bound))), self._window_size)


class BlazeFaceSearch:
    """The searches with BlazeFace on LiteRT: the full-range model for the frame and regions, the
    short-range model (a face filling most of its input) around tracked faces."""

    def __init__(self, settings: DetectionSettings) -> None:
        from edge.perception.blazeface import BlazeFace, BlazeFaceError

        self.settings = settings
        try:
            self._frame_model = BlazeFace("full", settings.blazeface_model_dir,
                                          min_score=settings.blazeface_min_score, brighten=True)
            self._face_model = BlazeFace("short", settings.blazeface_model_dir,
                                         min_score=settings.blazeface_track_min_score, brighten=True)
        except BlazeFaceError as error:
            raise DetectorError(str(error)) from None

    def whole(self, gray: np.ndarray, color: np.ndarray | None = None) -> list[Box]:
        return self._sized(self._run(self._frame_model, gray, color, None))

    def region(self, gray: np.ndarray, color: np.ndarray | None, region: Box) -> list[Box]:
        return self._sized(self._run(self._frame_model, gray, color, region))

    def around(self, gray: np.ndarray, color: np.ndarray | None, face: Box, strict: bool = False) -> list[Box]:
        frame_height, frame_width = gray.shape[:2]
        region = clip_box(expand_box(face, self.settings.roi_margin), frame_width, frame_height)
        if region is None:
            return []
        side = max(face[2], face[3])
        tolerance = self.settings.roi_size_tolerance
        # The same size window as Haar's local search (a little wider: BlazeFace sizes jitter more).
        low, high = side * (1.0 - 2 * tolerance), side * (1.0 + 2 * tolerance)
        return [box for box in self._run(self._face_model, gray, color, region) if low <= box[2] <= high]

    @staticmethod
    def _run(model, gray: np.ndarray, color: np.ndarray | None, region: Box | None) -> list[Box]:
        from edge.perception.blazeface import to_haar_convention

        image = color if color is not None else gray
        return [to_haar_convention(found.box, model.spec) for found in model.detect(image, region)]

    def _sized(self, boxes: list[Box]) -> list[Box]:
        maximum = self.settings.max_face_size or 1 << 30
        return [box for box in boxes if self.settings.min_face_size <= box[2] <= maximum]


def make_backend(settings: DetectionSettings) -> SearchBackend:
    if settings.backend == "blazeface":
        return BlazeFaceSearch(settings)
    return HaarSearch(settings)


class FaceDetector:
    """The detection schedule over one backend; keeps the state of one video source.

    After ``detect``: ``last_search_was_full`` says a whole-frame search ran,
    ``scene_cut`` that the frame starts a new scene (tracks should be
    dropped), ``last_boxes_searched`` which boxes came from a search over
    every size (whole frame or region) rather than the local search around a
    tracked face.
    """

    def __init__(self, settings: DetectionSettings | None = None) -> None:
        self.settings = settings or DetectionSettings()
        self.backend = make_backend(self.settings)
        self.change = ChangeMap(
            self.settings.change_cell, self.settings.change_threshold,
            self.settings.cut_mean_difference, self.settings.cut_histogram_distance,
        )
        self._frames_since_full_detection: int | None = None
        self.last_search_was_full = False
        self.scene_cut = False
        self.last_boxes_searched: list[bool] = []
        self.dark = False  # the last frame was equalised for detection (dark_highlights_below)
        self._previous_gray: np.ndarray | None = None
        self._last_found: list[Box] = []
        self._since_search = 0

    def reset(self) -> None:
        """Forget the schedule (new video source): the next frame gets a whole-frame detection."""
        self._frames_since_full_detection = None
        self.change.reset()
        self.last_search_was_full = False
        self.scene_cut = False
        self.dark = False
        self._previous_gray, self._last_found, self._since_search = None, [], 0

    def detect(self, gray: np.ndarray, tracked_boxes: Sequence[Box] = (), color: np.ndarray | None = None) -> list[Box]:
        """Faces in a frame, as full-resolution boxes (Haar convention).

        ``gray`` is the grey frame, ``color`` the BGR frame (used by the
        blazeface backend; grey is used when absent); ``tracked_boxes`` are
        where the tracked faces are expected (full resolution).
        """
        self.change.update(gray)  # on the frame as it is: equalising only some frames must not look like a cut
        self.scene_cut = self.change.cut and self._frames_since_full_detection is not None
        gray = self._lit(gray)
        if self._whole_frame_due(tracked_boxes):
            return self._whole_frame(gray, color, () if self.scene_cut else tracked_boxes)
        self._frames_since_full_detection = (self._frames_since_full_detection or 0) + 1
        self.last_search_was_full = False
        busy = self._changed_area(self._changed_regions()) > self.settings.busy_area * gray.shape[0] * gray.shape[1]
        if busy and self._frames_since_full_detection >= self.settings.busy_detect_every_n:
            # Most of the picture changed (the camera moves): one whole-frame search, but not every frame.
            return self._whole_frame(gray, color, tracked_boxes)
        followed, to_search = self._follow(gray, tracked_boxes, busy)
        found = remove_nested_around_known(followed + self._around_tracked(gray, color, to_search), tracked_boxes)
        searched: list[Box] = []
        # While busy, what changed stays marked until the next whole-frame search.
        for region in [] if busy else self._changed_regions():
            searched.extend(self.backend.region(gray, color, region))
            self.change.mark_searched(region)
        return self._remember(gray, self._confirmed(gray, color, self._merged(found, searched), tracked_boxes))

    def _follow(self, gray: np.ndarray, tracked_boxes: Sequence[Box], busy: bool) -> tuple[list[Box], list[Box]]:
        """Faces followed without a search this frame, and the tracked boxes still to search around.

        The search around a tracked face is most of the detector's time with a few faces in view
        (~1.3 ms a face). Between two such searches, a face that was found in the previous frame is
        followed by the shift of its picture (phase correlation of the two frames' patches, ~0.05 ms):
        every ``search_every_n`` frames each face is searched again, which also corrects its size.
        """
        every = self.settings.search_every
        self._since_search = (self._since_search + 1) % every if every > 1 else 0
        # In the dark too (on the equalised image): shrinking the patch to 32 px averages the sensor noise
        # away; on dark_noise_blur following keeps recall 0.995 and precision 1.0, and detection runs 31 % faster.
        if (self._since_search == 0 or self._previous_gray is None
                or self._previous_gray.shape != gray.shape):
            return [], list(tracked_boxes)
        followed, to_search = [], []
        for box in tracked_boxes:
            fresh = any(intersection_over_union(box, last) >= 0.5 for last in self._last_found)
            moved = follow_patch(self._previous_gray, gray, box) if fresh else None
            if moved is None:
                to_search.append(box)
            else:
                followed.append(moved)
                if not busy:
                    self.change.mark_searched(expand_box(moved, self.settings.roi_margin))
        return followed, to_search

    def _remember(self, gray: np.ndarray, boxes: list[Box]) -> list[Box]:
        """Keep this frame (and what it found) for following the faces in the next one."""
        self._previous_gray, self._last_found = gray, list(boxes)
        return boxes

    def _lit(self, gray: np.ndarray) -> np.ndarray:
        """The detection image: equalised while the picture is dark (Haar only; BlazeFace reads the colour frame).

        In low light with sensor noise the cascade still fires near a face, but its boxes drift and grow
        (a 143 px face boxed at 174 px, or lost at half size); equalising spreads the few grey levels the
        picture uses over the whole range. Only in the dark: in a well-lit frame it adds false positives.
        """
        threshold = self.settings.dark_highlights_below
        if threshold is None or self.settings.backend != "haar" or self.settings.equalize_hist:
            return gray
        highlights = self.change.highlights()
        self.dark = highlights < threshold or (self.dark and highlights < threshold + DARK_HYSTERESIS)
        return cv2.equalizeHist(gray) if self.dark else gray

    def _changed_regions(self) -> list[Box]:
        # A region at least twice the smallest face: the face must fit inside with some context.
        return self.change.changed_regions(int(2 * self.settings.min_face_size))

    @staticmethod
    def _changed_area(regions: list[Box]) -> int:
        return sum(box_area(region) for region in regions)

    def _whole_frame_due(self, tracked_boxes: Sequence[Box]) -> bool:
        if self._frames_since_full_detection is None or self.scene_cut:
            return True
        every = self.settings.full_detect_every_n if tracked_boxes else self.settings.idle_detect_every_n
        return self._frames_since_full_detection + 1 >= every

    def _whole_frame(self, gray: np.ndarray, color: np.ndarray | None, tracked_boxes: Sequence[Box]) -> list[Box]:
        """A whole-frame search, plus the local search of tracked faces it misses (a face the whole-frame
        search at reduced resolution misses now and then is still reported)."""
        self._frames_since_full_detection = 0
        self.last_search_was_full = True
        whole = self.backend.whole(gray, color)
        self.change.mark_searched(None)
        missed = [box for box in tracked_boxes if all(intersection_over_union(box, found) < 0.3 for found in whole)]
        around = self._around_tracked(gray, color, missed) if missed else []
        # Where a whole-frame box is a tracked face, a larger box around it is the cascade firing on the head.
        boxes = remove_nested_around_known(whole + [box for box in around
                                                    if all(intersection_over_union(box, found) < 0.5 for found in whole)],
                                           tracked_boxes)
        whole_set = set(whole)
        self.last_boxes_searched = [box in whole_set for box in boxes]
        return self._remember(gray, self._confirmed(gray, color, boxes, tracked_boxes))

    def _around_tracked(self, gray: np.ndarray, color: np.ndarray | None, tracked_boxes: Sequence[Box]) -> list[Box]:
        """The local search around each tracked face.

        Where one tracked face's box holds another's, the inner one is kept: when a face is covered by
        one passing in front, the lenient search around it fires on the head in front at the covered
        face's size, and would otherwise swallow that face's own box.
        """
        found: list[Box] = []
        for tracked in tracked_boxes:
            boxes = self.backend.around(gray, color, tracked)
            if boxes:
                # Found again: its surroundings need no other search this frame.
                self.change.mark_searched(expand_box(tracked, self.settings.roi_margin))
            # The search looks for this face: of several boxes, the one most like it (a second box is the
            # face again, shifted, or a neighbour that the region and whole-frame searches confirm first).
            found.extend(sorted(boxes, key=lambda box: -intersection_over_union(box, tracked))[:1])
        return remove_nested_around_known(remove_duplicates(found), tracked_boxes)

    def _merged(self, around: list[Box], searched: list[Box]) -> list[Box]:
        """Local-search boxes, then region boxes that are not the same faces."""
        extra = [box for box in remove_nested(searched)
                 if all(intersection_over_union(box, other) < 0.5 for other in around)]
        boxes = remove_nested_around_known(around + extra, around)
        extra_set = set(extra)
        self.last_boxes_searched = [box in extra_set for box in boxes]
        return boxes

    def _confirmed(self, gray: np.ndarray, color: np.ndarray | None, boxes: list[Box],
                   tracked_boxes: Sequence[Box]) -> list[Box]:
        """Drop new faces (found by a search over every size, near no tracked face) that a strict local search
        around them does not find again.

        Whole-frame and region searches at reduced resolution now and then fire on a patch of texture or
        between two faces; such a box would then be followed by the lenient local search for frames. The
        check costs one local search per new face, rarely more than one a frame.
        """
        if not self.settings.confirm_new_faces:
            return boxes
        kept, flags = [], []
        for box, searched in zip(boxes, self.last_boxes_searched):
            new = searched and all(intersection_over_union(box, tracked) < 0.3 for tracked in tracked_boxes)
            if not new or any(intersection_over_union(box, again) >= 0.5
                              for again in self.backend.around(gray, color, box, strict=True)):
                kept.append(box)
                flags.append(searched)
        self.last_boxes_searched = flags
        return kept

    # The searches on their own (benchmarks, tests).
    def detect_full(self, gray: np.ndarray, color: np.ndarray | None = None) -> list[Box]:
        """Search the whole frame at every allowed face size."""
        return self.backend.whole(gray, color)

    def detect_in_regions(self, gray: np.ndarray, tracked_boxes: Sequence[Box], color: np.ndarray | None = None) -> list[Box]:
        """Search only around each tracked face, only for sizes close to the tracked size."""
        found: list[Box] = []
        for tracked in tracked_boxes:
            found.extend(self.backend.around(gray, color, tracked))
        return remove_nested(remove_duplicates(found))
