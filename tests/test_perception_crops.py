"""Face crops and flip test-time augmentation: geometry, the calibrated defaults, TTA on the real model."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from common.config import load_config
from edge.config import EdgeConfig
from edge.model import ModelUnavailable, load_model
from edge.perception.boxes import crop_rectangle
from edge.perception.classifier import FaceClassifier, crop_face
from edge.perception.detector import FaceDetector, to_gray
from edge.perception.settings import ClassificationSettings
from runtime.preprocess import normalize_faces

REPOSITORY = Path(__file__).resolve().parents[1]
BENCH_JSON = REPOSITORY / "docs" / "bench-crops.json"
MEDIA = REPOSITORY.parent / "shared" / "media"


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    try:
        return load_model(None, None, num_threads=1)
    except ModelUnavailable as error:
        pytest.skip(f"no converted emotion model in the store ({error})")


@pytest.fixture(scope="module")
def group_faces() -> tuple[np.ndarray, list]:
    path = MEDIA / "group_photo.jpg"
    if not path.is_file():
        pytest.skip(f"test media {path} is missing")
    gray = to_gray(cv2.imread(str(path)))
    boxes = FaceDetector().detect_full(gray)[:5]
    assert len(boxes) == 5
    return gray, boxes


def test_crop_rectangle_adds_margins_and_offset_as_fractions_of_the_side() -> None:
    assert crop_rectangle((100, 50, 40, 40), 0.0, 0.0, 0.0) == (100, 50, 40, 40)
    # 10 % of 40 px left/right, 20 % above/below, moved down by 5 % (2 px).
    assert crop_rectangle((100, 50, 40, 40), 0.1, 0.2, 0.05) == (96, 44, 48, 56)
    # A negative margin trims; a negative offset moves up.
    assert crop_rectangle((100, 50, 40, 40), -0.1, -0.1, -0.1) == (104, 50, 32, 32)


def test_crop_rectangle_squares_a_tall_box_first() -> None:
    # 40x60 becomes a 60x60 square around the same centre (x 90), then the margins apply to 60 px.
    assert crop_rectangle((100, 50, 40, 60), 0.1, 0.2, 0.05) == (84, 41, 72, 84)


def test_crop_at_the_frame_edge_keeps_its_size_and_replicates_the_edge() -> None:
    rows, columns = np.indices((60, 80))
    gray = (rows * 3 + columns).astype(np.uint8)  # every pixel tells where it came from
    crop = crop_face(gray, (-10, 40, 30, 30), margin=0.1, margin_y=0.2, offset_y=0.0)
    # Rectangle (-13, 34, 36, 42): 13 columns left of the frame, 16 rows below it.
    assert crop.shape == (42, 36)
    inside = gray[34:60, 0:23]
    assert np.array_equal(crop[:26, 13:], inside)
    assert np.array_equal(crop[:26, :13], np.repeat(inside[:, :1], 13, axis=1))
    assert np.array_equal(crop[26:, 13:], np.repeat(inside[-1:, :], 16, axis=0))
    assert (crop[26:, :13] == gray[59, 0]).all()


def test_a_crop_wholly_outside_the_frame_is_an_error() -> None:
    with pytest.raises(ValueError, match="outside"):
        crop_face(np.zeros((50, 50), np.uint8), (60, 10, 20, 20), margin=0.1)


def test_the_default_crop_is_the_one_the_calibration_picked() -> None:
    report = json.loads(BENCH_JSON.read_text())
    chosen, defaults = report["chosen"], ClassificationSettings()
    assert defaults.crop_margin == pytest.approx(chosen["margin_x"])
    assert defaults.vertical_margin == pytest.approx(chosen["margin_y"])
    assert defaults.crop_offset_y == pytest.approx(chosen["offset_y"])
    # ... and the chosen crop is the best of the calibration sweep (by the criterion it was picked by).
    sweep, criterion = report["calibration"]["sweep"], report["calibration"]["picked_by"]
    chosen_row = next(row for row in sweep if all(row[key] == value for key, value in chosen.items()))
    assert chosen_row[criterion] == max(row[criterion] for row in sweep)
    # Flip TTA is on by default exactly when it measured under its cost limit per face.
    extra_ms = report["flip_tta"]["cost"]["1_faces"]["extra_ms_per_face"]
    assert defaults.flip_tta is (extra_ms < report["flip_tta"]["cost_limit_ms"])


def test_the_classifier_uses_the_calibrated_crop(group_faces) -> None:  # type: ignore[no-untyped-def]
    gray, boxes = group_faces
    settings = ClassificationSettings()
    expected = [
        cv2.resize(crop_face(gray, box, settings.crop_margin, settings.vertical_margin, settings.crop_offset_y), (64, 64))
        for box in boxes
    ]
    assert np.array_equal(FaceClassifier(lambda batch: batch, settings).crops(gray, boxes), np.stack(expected))


def test_flip_tta_is_the_mean_of_the_face_and_its_mirror(model, group_faces) -> None:  # type: ignore[no-untyped-def]
    gray, boxes = group_faces
    plain = FaceClassifier(model, ClassificationSettings(flip_tta=False))
    faces = plain.crops(gray, boxes)
    direct = model.predict(normalize_faces(faces))
    mirrored = model.predict(normalize_faces(np.ascontiguousarray(faces[:, :, ::-1])))

    augmented, crops = FaceClassifier(model, ClassificationSettings(flip_tta=True)).classify(gray, boxes)

    assert np.array_equal(crops, faces)
    np.testing.assert_allclose(augmented, (direct + mirrored) / 2, atol=1e-6)
    assert np.abs(direct - mirrored).max() > 1e-3  # the mirror really is another input
    np.testing.assert_allclose(plain.classify(gray, boxes)[0], direct, atol=1e-6)


def test_flip_tta_sends_face_and_mirror_in_one_batch() -> None:
    calls: list[np.ndarray] = []

    def recording_predict(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.copy())
        return np.tile(np.arange(7, dtype=np.float32), (len(batch), 1))

    gray = np.random.default_rng(3).integers(0, 256, (120, 160), dtype=np.uint8)
    classifier = FaceClassifier(recording_predict, ClassificationSettings(flip_tta=True))
    classifier.classify(gray, [(10, 10, 40, 40), (80, 30, 50, 50)])

    assert len(calls) == 1 and calls[0].shape == (4, 64, 64, 1)
    assert np.array_equal(calls[0][2:], calls[0][:2, :, ::-1])


def test_classification_settings_are_validated() -> None:
    assert ClassificationSettings(crop_margin=0.1, crop_margin_y=None).vertical_margin == 0.1
    assert ClassificationSettings(crop_margin=0.1, crop_margin_y=0.2).vertical_margin == 0.2
    for bad in ({"crop_offset_y": 0.5}, {"crop_margin": -0.5}, {"crop_margin_y": 2.0}, {"flip_tta": "maybe"}, {"crop": 1}):
        with pytest.raises(ValidationError):
            ClassificationSettings(**bad)


def test_flip_tta_can_be_turned_off_in_the_edge_config(pki_dir) -> None:  # type: ignore[no-untyped-def]
    environ = {"EMQ_EDGE__DEVICE_ID": "cam-a", "EMQ_EDGE__PKI_DIR": str(pki_dir), "EMQ_EDGE__CLASSIFICATION__FLIP_TTA": "false"}
    config = load_config(EdgeConfig, None, env_prefix="EMQ_EDGE__", environ=environ)
    assert config.classification.flip_tta is False
