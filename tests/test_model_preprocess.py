"""Face preprocessing: the exact pixels the pretrained model was trained on."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from runtime.preprocess import FACE_SIZE, normalize_faces, prepare_faces, resize_faces


def test_normalize_maps_uint8_range_to_minus_one_one() -> None:
    faces = np.zeros((3, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    faces[1] = 255
    faces[2] = 51  # 51 / 255 = 0.2 -> (0.2 - 0.5) * 2 = -0.6

    normalized = normalize_faces(faces)

    assert normalized.shape == (3, FACE_SIZE, FACE_SIZE, 1)
    assert normalized.dtype == np.float32
    assert np.all(normalized[0] == -1.0)
    assert np.all(normalized[1] == 1.0)
    np.testing.assert_allclose(normalized[2], -0.6, atol=1e-6)


def test_normalize_matches_arriaga_float32_arithmetic() -> None:
    # His preprocess_input: astype float32, / 255.0, - 0.5, * 2.0, in that order.
    faces = np.arange(256, dtype=np.uint8).repeat(16)[: FACE_SIZE * FACE_SIZE].reshape(1, FACE_SIZE, FACE_SIZE)
    expected = ((faces.astype("float32") / 255.0) - 0.5) * 2.0

    np.testing.assert_array_equal(normalize_faces(faces)[..., 0], expected)


@pytest.mark.parametrize(
    ("faces", "error"),
    [
        (np.zeros((2, 48, 48), np.uint8), ValueError),
        (np.zeros((FACE_SIZE, FACE_SIZE), np.uint8), ValueError),
        (np.zeros((1, FACE_SIZE, FACE_SIZE), np.float32), TypeError),
    ],
)
def test_normalize_rejects_wrong_input(faces: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error):
        normalize_faces(faces)


def test_resize_uses_opencv_default_bilinear_interpolation() -> None:
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in [(48, 48), (120, 97), (20, 33)]]

    resized = resize_faces(crops)

    assert resized.shape == (3, FACE_SIZE, FACE_SIZE)
    assert resized.dtype == np.uint8
    for crop, face in zip(crops, resized, strict=True):
        np.testing.assert_array_equal(face, cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LINEAR))


def test_resize_keeps_faces_already_at_model_size() -> None:
    crop = np.random.default_rng(2).integers(0, 256, size=(FACE_SIZE, FACE_SIZE), dtype=np.uint8)

    np.testing.assert_array_equal(resize_faces([crop])[0], crop)


def test_resize_of_no_faces_is_an_empty_batch() -> None:
    assert resize_faces([]).shape == (0, FACE_SIZE, FACE_SIZE)
    assert prepare_faces([]).shape == (0, FACE_SIZE, FACE_SIZE, 1)


def test_resize_accepts_a_stacked_array_of_crops() -> None:
    stacked = np.zeros((5, 48, 48), dtype=np.uint8)

    assert resize_faces(stacked).shape == (5, FACE_SIZE, FACE_SIZE)


@pytest.mark.parametrize(
    ("crop", "error"),
    [(np.zeros((48, 48, 3), np.uint8), ValueError), (np.zeros((48, 48), np.float64), TypeError)],
)
def test_resize_rejects_colour_or_float_crops(crop: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error):
        resize_faces([crop])
