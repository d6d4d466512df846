"""Classification, annotation and the whole pipeline with the real TFLite emotion model."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
import pytest

from contract.emotions import EMOTIONS
from edge.perception.classifier import FaceClassifier, crop_face
from edge.perception.detector import FaceDetector, to_gray
from edge.model import ModelUnavailable, load_model
from edge.perception.pipeline import FaceResult, FrameAnalysis, PerceptionPipeline
from edge.perception.settings import AnnotationSettings, TrackingSettings

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def media_image(name: str) -> np.ndarray:
    path = MEDIA / name
    if not path.is_file():
        pytest.skip(f"test media {path} is missing")
    image = cv2.imread(str(path))
    assert image is not None, f"cannot decode {path}"
    return image


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    try:
        return load_model(None, None, num_threads=1)
    except ModelUnavailable as error:
        pytest.skip(f"no converted emotion model in the store ({error})")


@pytest.fixture()
def pipeline(model) -> PerceptionPipeline:  # type: ignore[no-untyped-def]
    return PerceptionPipeline(None, None, None, model)


def test_justin_is_one_happy_face(pipeline: PerceptionPipeline) -> None:
    analysis = pipeline.process(media_image("justin.jpg"))
    assert len(analysis.faces) == 1
    face = analysis.faces[0]
    assert face.label == "happy"
    assert face.label == EMOTIONS[int(np.argmax(face.probabilities))]
    assert face.confidence == pytest.approx(float(face.probabilities.max()))
    assert face.probabilities.shape == (7,) and face.probabilities.sum() == pytest.approx(1.0, abs=1e-3)
    assert face.crop64.shape == (64, 64) and face.crop64.dtype == np.uint8
    assert face.smoothed_label is None  # smoothing is off by default


def test_frame_analysis_has_the_agreed_fields(pipeline: PerceptionPipeline) -> None:
    analysis = pipeline.process(media_image("justin.jpg"))
    assert [field.name for field in fields(FrameAnalysis)] == ["faces", "annotated", "timings_ms"]
    assert {"box", "probabilities", "label", "confidence", "track_id", "crop64"} <= {
        field.name for field in fields(FaceResult)
    }
    assert set(analysis.timings_ms) == {"detect", "classify", "draw"}
    assert all(value >= 0 for value in analysis.timings_ms.values())
    assert analysis.annotated.shape == media_image("justin.jpg").shape


def test_no_faces_image_does_not_call_for_a_crash(pipeline: PerceptionPipeline) -> None:
    analysis = pipeline.process(media_image("no-faces.jpg"))
    assert analysis.faces == []


def test_batch_classification_equals_per_face_classification(model) -> None:  # type: ignore[no-untyped-def]
    gray = to_gray(media_image("group_photo.jpg"))
    boxes = FaceDetector().detect_full(gray)
    assert len(boxes) >= 4
    classifier = FaceClassifier(model)
    batch_probabilities, batch_crops = classifier.classify(gray, boxes)
    assert batch_probabilities.shape == (len(boxes), 7)
    for index, box in enumerate(boxes):
        single_probabilities, single_crops = classifier.classify(gray, [box])
        assert np.array_equal(single_crops[0], batch_crops[index])
        np.testing.assert_allclose(single_probabilities[0], batch_probabilities[index], atol=1e-5)


def test_all_faces_of_a_frame_go_to_the_model_in_one_call() -> None:
    calls: list[int] = []

    def counting_predict(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        assert batch.dtype == np.float32 and batch.shape[1:] == (64, 64, 1)
        assert batch.min() >= -1.0 and batch.max() <= 1.0
        return np.full((len(batch), 7), 1 / 7, dtype=np.float32)

    faces = PerceptionPipeline(None, None, None, counting_predict).process(media_image("group_photo.jpg")).faces
    assert calls == [2 * len(faces)] and len(faces) >= 4  # each face and its mirror (flip TTA, the default)


def test_crop_near_the_frame_edge_is_padded_to_a_square() -> None:
    gray = np.full((100, 100), 200, dtype=np.uint8)
    crop = crop_face(gray, (-10, 80, 40, 40), margin=0.1)
    assert crop.shape == (48, 48)
    assert (crop == 200).all()


def test_annotation_draws_inside_the_box_on_a_copy(pipeline: PerceptionPipeline) -> None:
    frame = media_image("justin.jpg")
    original = frame.copy()
    analysis = pipeline.process(frame)
    x, y, width, height = analysis.faces[0].box
    inside_before = original[y : y + height, x : x + width]
    inside_after = analysis.annotated[y : y + height, x : x + width]
    assert np.count_nonzero(np.any(inside_before != inside_after, axis=2)) > 2 * (width + height)
    assert np.array_equal(frame, original), "the caller's frame was drawn on"


def test_annotation_in_place_when_asked(model) -> None:  # type: ignore[no-untyped-def]
    frame = media_image("justin.jpg")
    pipeline = PerceptionPipeline(None, None, AnnotationSettings(draw_on_copy=False), model)
    analysis = pipeline.process(frame)
    assert analysis.annotated is frame


def test_smoothing_gives_a_smoothed_label_per_track(model) -> None:  # type: ignore[no-untyped-def]
    pipeline = PerceptionPipeline(None, TrackingSettings(smoothing_window=5), None, model)
    frame = media_image("justin.jpg")
    for _ in range(3):
        face = pipeline.process(frame).faces[0]
    assert face.track_id == 1
    assert face.smoothed_label == "happy"
