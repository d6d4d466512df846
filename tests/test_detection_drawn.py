"""Clips drawn from a seed (bench/facesets/drawn.py) and the Haar-findable recall of bench_detection.

The drawn clips are the face set's footage that nobody tuned for: these tests check that a seed
fixes them exactly, that another seed gives another layout, and that what is drawn stays within the
ranges the module promises.
"""

from __future__ import annotations

import math

import pytest

from bench.bench_detection import haar_findable_truth, judged_recall, misses
from bench.facesets.drawn import FACE_PHOTOS, SCENE_FRAMES, SPRITE_SIDE, STAGE_BACKGROUNDS, drawn_specs
from bench.facesets.metrics import Truth, score_clip
from bench.facesets.synthetic import WIDTH, build_clip
from tests.test_detection_faceset import photos  # noqa: F401 (the fixture: ../shared/media's photos, or a skip)


def test_a_seed_fixes_the_drawn_clips_and_another_seed_draws_others(photos) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    first, again = drawn_specs(11, 5, photos), drawn_specs(11, 5, photos)
    assert first == again
    assert [spec.name for spec in first] == [f"drawn11_{index}" for index in range(5)]
    other = drawn_specs(12, 5, photos)
    assert [spec.scenes for spec in other] != [spec.scenes for spec in first]
    # A longer list starts with the same clips: asking for more never changes the first ones.
    assert drawn_specs(11, 7, photos)[:5] == first


def test_drawn_scenes_stay_within_their_ranges(photos) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    scenes = [scene for spec in drawn_specs(3, 40, photos) for scene in spec.scenes]
    assert all(SCENE_FRAMES[0] <= scene.frames <= SCENE_FRAMES[1] for scene in scenes)
    assert {scene.photo for scene in scenes} <= set(FACE_PHOTOS) | set(STAGE_BACKGROUNDS)
    sprites = [sprite for scene in scenes for sprite in scene.sprites]
    assert sprites and all(photos[sprite.photo].faces[sprite.face].frontal for sprite in sprites)
    assert all(SPRITE_SIDE[0] - 1e-9 <= sprite.keys[0].size <= SPRITE_SIDE[1] + 1e-9 for sprite in sprites)
    # Every kind of event shows up over 40 clips: cuts, stage scenes, camera moves, bars, dim and hard-JPEG looks.
    assert any(len(spec.scenes) > 1 for spec in drawn_specs(3, 40, photos))
    assert any(not scene.sprites for scene in scenes) and any(len(scene.sprites) >= 3 for scene in scenes)
    assert any(len(scene.view) > 1 for scene in scenes) and any(scene.bars for scene in scenes)
    assert any(scene.look.brightness < 0.5 for scene in scenes) and any(scene.look.jpeg_quality <= 40 for scene in scenes)
    # Sprites enter from beyond an edge as well as popping up inside the frame.
    assert any(sprite.keys[0].x < 0 or sprite.keys[0].x > WIDTH for sprite in sprites)


def test_a_drawn_clip_renders_with_truth_and_cuts(photos) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    spec = next(spec for spec in drawn_specs(5, 20, photos) if len(spec.scenes) > 1)
    clip = build_clip(spec, 5, photos)
    assert len(clip.frames) == sum(scene.frames for scene in spec.scenes)
    assert clip.cuts == [sum(scene.frames for scene in spec.scenes[:index]) for index in range(1, len(spec.scenes))]
    assert sum(face.findable for faces in clip.truth for face in faces) > 0
    assert build_clip(spec, 5, photos).digest() == clip.digest()


def test_haar_findable_recall_ignores_faces_the_exhaustive_search_missed() -> None:
    truth = [[Truth("a", (0, 0, 50, 50)), Truth("b", (100, 0, 50, 50))]] * 2
    exhaustive = [[(0, 0, 50, 50)], [(0, 0, 50, 50), (100, 0, 50, 50)]]  # b is missed by exhaustive Haar in frame 0
    haar_truth = haar_findable_truth(truth, exhaustive)
    assert [[face.findable for face in faces] for faces in haar_truth] == [[True, False], [True, True]]
    edge = [[(0, 0, 50, 50)], [(0, 0, 50, 50)]]  # the edge finds a, never b
    assert score_clip(truth, edge).recall == 0.5
    haar_recall = score_clip(haar_truth, edge).recall
    assert haar_recall == pytest.approx(2 / 3)
    summary = {"recall": 0.5, "recall_haar_findable": haar_recall, "precision": 1.0, "latency_p95": 0, "cut_cost_max": 0}
    assert judged_recall(summary) == pytest.approx(2 / 3) and "recall" in misses(summary, True)
    # Without the exhaustive side, the recall of every findable face is judged.
    assert judged_recall({"recall": 0.99}) == 0.99 and judged_recall({"recall": 0.99, "recall_haar_findable": math.nan}) == 0.99


def test_faces_below_the_issue_range_are_listed_as_small_not_judged() -> None:
    import numpy as np

    from bench.facesets.synthetic import MIN_FACE_SIDE, truth_of

    owner = np.zeros((360, 640), np.int16)
    small = truth_of("a", (100, 100, MIN_FACE_SIDE - 1, MIN_FACE_SIDE - 1), True, owner, 0)
    assert small is not None and not small.findable and small.reason == "small"
    assert truth_of("b", (100, 100, MIN_FACE_SIDE, MIN_FACE_SIDE), True, owner, 0).findable
