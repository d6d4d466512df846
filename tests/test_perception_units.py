"""Unit tests of the perception helpers and settings: no media, no model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edge.perception.boxes import (
    clip_box,
    expand_box,
    greedy_matches,
    intersection_over_union,
    iou_matrix,
    remove_duplicates,
    remove_nested,
    scale_box,
    square_box,
)
from edge.perception.codec import encode_jpeg, encode_png
from edge.perception.settings import AnnotationSettings, DetectionSettings, TrackingSettings
from edge.perception.tracker import FaceTracker

REPOSITORY = Path(__file__).resolve().parents[1]


def test_square_box_keeps_the_centre() -> None:
    assert square_box((10, 20, 40, 60)) == (0, 20, 60, 60)
    assert square_box((10, 20, 60, 40)) == (10, 10, 60, 60)


def test_expand_and_clip_box() -> None:
    assert expand_box((10, 10, 20, 20), 0.5) == (0, 0, 40, 40)
    assert clip_box((-5, -5, 20, 20), 100, 100) == (0, 0, 15, 15)
    assert clip_box((90, 90, 20, 20), 100, 100) == (90, 90, 10, 10)
    assert clip_box((200, 200, 5, 5), 100, 100) is None


def test_scale_box_rounds_to_ints() -> None:
    assert scale_box((11, 21, 31, 41), 0.5) == (6, 10, 16, 20)
    assert all(isinstance(value, int) for value in scale_box((np.int32(3), 4, 5, 6), 2.0))


def test_intersection_over_union() -> None:
    assert intersection_over_union((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert intersection_over_union((0, 0, 10, 10), (20, 20, 10, 10)) == 0.0
    assert intersection_over_union((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    matrix = iou_matrix([(0, 0, 10, 10), (20, 20, 10, 10)], [(5, 0, 10, 10)])
    assert matrix.shape == (2, 1)
    assert matrix[0, 0] == pytest.approx(50 / 150)
    assert iou_matrix([], [(0, 0, 1, 1)]).shape == (0, 1)


def test_greedy_matches_take_the_best_pair_first() -> None:
    scores = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert sorted(greedy_matches(scores, 0.3)) == [(0, 0)]  # row 1's only good column is taken, 0.1 < 0.3
    assert greedy_matches(np.array([[0.2]]), 0.3) == []


def test_duplicate_and_nested_boxes_are_removed() -> None:
    assert remove_duplicates([(0, 0, 10, 10), (1, 1, 10, 10), (50, 50, 10, 10)]) == [(0, 0, 10, 10), (50, 50, 10, 10)]
    face, mouth = (100, 100, 120, 120), (140, 170, 40, 40)
    assert remove_nested([face, mouth]) == [face]
    assert remove_nested([face, (300, 100, 40, 40)]) == [face, (300, 100, 40, 40)]


def test_detection_settings_reject_impossible_combinations() -> None:
    DetectionSettings()  # the defaults are consistent
    with pytest.raises(ValidationError, match="cascade's 24 px window"):
        DetectionSettings(min_face_size=30, detect_scale=0.5)
    with pytest.raises(ValidationError, match="max_face_size"):
        DetectionSettings(min_face_size=100, max_face_size=60)
    with pytest.raises(ValidationError, match="roi_face_size"):
        DetectionSettings(roi_face_size=26, roi_size_tolerance=0.3)
    with pytest.raises(ValidationError):
        DetectionSettings(scale_factor=1.0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        DetectionSettings(scalefactor=1.2)  # a typo fails loudly


def test_tracking_and_annotation_settings_validation() -> None:
    with pytest.raises(ValidationError, match="smoothing_window 1"):
        TrackingSettings(smoothing_window=1)
    with pytest.raises(ValidationError, match="invisible"):
        AnnotationSettings(text_color=(1, 2, 3), label_background_color=(1, 2, 3))
    with pytest.raises(ValidationError):
        AnnotationSettings(box_color=(0, 0, 256))


def test_every_settings_field_is_described() -> None:
    for settings in (DetectionSettings, TrackingSettings, AnnotationSettings):
        for name, field in settings.model_fields.items():
            assert field.description, f"{settings.__name__}.{name} has no description"


def test_tracker_keeps_ids_through_short_misses_and_drops_old_tracks() -> None:
    tracker = FaceTracker(TrackingSettings(max_missed=2))
    assert tracker.update([(0, 0, 50, 50), (200, 0, 50, 50)]) == [1, 2]
    assert tracker.update([(203, 2, 50, 50), (4, 1, 50, 50)]) == [2, 1]  # order of detections does not matter
    assert tracker.update([(6, 2, 50, 50)]) == [1]
    assert tracker.track_lost  # track 2 was seen last frame and is now missing
    assert tracker.update([(8, 2, 50, 50), (205, 2, 50, 50)]) == [1, 2]  # back within max_missed
    for _ in range(3):
        tracker.update([(8, 2, 50, 50)])
    assert tracker.update([(205, 2, 50, 50)]) == [3]  # expired: a new id, never a reused one


def test_tracker_searches_at_the_size_of_the_last_whole_frame_detection() -> None:
    tracker = FaceTracker()
    tracker.update([(100, 100, 60, 60)], whole_frame=True)
    tracker.update([(104, 100, 63, 63)], whole_frame=False)  # a local search found it a bit larger (jitter)
    assert tracker.live_boxes() == [(104, 100, 63, 63)]
    assert tracker.search_boxes() == [(105, 101, 60, 60)]  # latest centre, anchored size
    tracker.update([(104, 100, 63, 63)], whole_frame=True)
    assert tracker.search_boxes() == [(104, 100, 63, 63)]


def test_tracker_anchor_follows_a_face_that_grows_beyond_jitter() -> None:
    tracker = FaceTracker()
    tracker.update([(100, 100, 60, 60)], whole_frame=True)
    tracker.update([(98, 98, 66, 66)], whole_frame=False)  # +10 %: a zoom, more than one pyramid step
    assert tracker.search_boxes() == [(98, 98, 66, 66)]


def test_tracker_takes_anchor_sizes_per_box() -> None:
    tracker = FaceTracker()
    tracker.update([(0, 0, 60, 60), (200, 0, 60, 60)], whole_frame=True)
    tracker.update([(0, 0, 63, 63), (200, 0, 63, 63)], whole_frame=[True, False])
    assert tracker.search_boxes() == [(0, 0, 63, 63), (201, 1, 60, 60)]


def test_tracker_smoothing_averages_probabilities() -> None:
    tracker = FaceTracker(TrackingSettings(smoothing_window=2))
    (track_id,) = tracker.update([(0, 0, 50, 50)])
    first = np.array([0.1, 0, 0, 0.9, 0, 0, 0], dtype=np.float32)
    second = np.array([0.7, 0, 0, 0.3, 0, 0, 0], dtype=np.float32)
    third = np.array([0.9, 0, 0, 0.1, 0, 0, 0], dtype=np.float32)
    assert np.allclose(tracker.smoothed_probabilities(track_id, first), first)
    assert np.allclose(tracker.smoothed_probabilities(track_id, second), (first + second) / 2)
    assert np.allclose(tracker.smoothed_probabilities(track_id, third), (second + third) / 2)  # window of 2
    assert FaceTracker().smoothed_probabilities(track_id, first) is None  # off by default


def test_encode_jpeg_limits_width_and_quality() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (480, 960, 3), dtype=np.uint8)
    data = encode_jpeg(frame, quality=70, max_width=480)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (240, 480, 3)
    assert encode_jpeg(frame, quality=30) != encode_jpeg(frame, quality=90)
    with pytest.raises(ValueError):
        encode_jpeg(frame, quality=0)


def test_encode_png_is_a_lossless_grey_image() -> None:
    crop = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    data = encode_png(crop)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert data[25] == 0  # PNG colour type 0: greyscale, as contract.messages requires
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), crop)
    with pytest.raises(ValueError):
        encode_png(np.zeros((64, 64, 3), np.uint8))


def test_edge_perception_never_imports_tensorflow() -> None:
    code = (
        "import sys\n"
        "import edge.perception, edge.perception.pipeline, edge.model, edge.assembly, edge.sources\n"
        "heavy = sorted(name for name in ('tensorflow', 'keras', 'tf_keras') if name in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_known_face_is_kept_and_the_head_box_around_it_dropped() -> None:
    from edge.perception.boxes import remove_nested_around_known

    face, head, mouth = (116, 148, 54, 54), (114, 104, 104, 104), (130, 180, 20, 20)
    tracked = (118, 145, 58, 58)
    # Without knowing the face, the outer box wins (a mouth inside a face is the usual case) ...
    assert remove_nested([face, head]) == [head]
    # ... but where the small box is the tracked face, the box around it is the false one.
    assert remove_nested_around_known([face, head, mouth], [tracked]) == [face]
    # A known face that holds a smaller unknown box still drops it, and unknown boxes elsewhere stay.
    elsewhere = (400, 100, 80, 80)
    assert remove_nested_around_known([head, mouth, elsewhere], [head]) == [head, elsewhere]
    assert remove_nested_around_known([face, head], []) == [head]
    # Two known faces, one inside the other: the inner one is the face in front (the outer box drifted
    # onto the head in front, or is a face behind it, mostly covered).
    behind = (292, 120, 204, 204)
    in_front = (380, 200, 110, 110)
    assert remove_nested_around_known([(346, 111, 203, 203), in_front], [behind, in_front]) == [in_front]
