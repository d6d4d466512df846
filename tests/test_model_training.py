"""Training: fine-tuning the pretrained model, the time budget, early stopping, the input pipeline.

Runs on a few hundred FER2013 faces so the whole file takes well under a
minute on 2 cores.  Both FER2013 splits are sorted by class, so every subset
here is a seeded random sample, never a slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="training needs the 'train' extra (tensorflow-cpu, keras)")

import keras
import tensorflow as tf

from models.architecture import build_mini_xception
from models.convert import probe_batch
from runtime.preprocess import normalize_faces, resize_faces
from runtime.registry import ModelRegistry, RegistryError
from models.training import (
    SubsampledPointwiseConv2D,
    TrainingData,
    TrainingSettings,
    _EarlyStoppingWithBestWeights,
    _output_to_input_transforms,
    augment_faces,
    choose_monitored_set,
    model_inputs,
    train,
    training_dataset,
    training_graph,
)

REPO_STORE = Path(__file__).resolve().parents[1] / "models" / "store"
FER2013_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013_trainval.npz"
TRAIN_FACES = 320
VALIDATION_FACES = 200

pytestmark = [
    pytest.mark.slow,
    # Keras 3.15 predict() trips a numpy 2 copy-keyword deprecation internally; not ours to fix.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]


def random_subset(faces: np.ndarray, labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    chosen = np.random.default_rng(seed).choice(len(labels), size=count, replace=False)
    return resize_faces(faces[chosen]), labels[chosen].astype(np.int64)


@pytest.fixture(scope="module")
def fer2013() -> TrainingData:
    """A few hundred 64x64 FER2013 training faces, a 200-face validation sample and a tiny 'collected' set."""
    if not FER2013_NPZ.is_file():
        pytest.skip(f"{FER2013_NPZ} not found: the FER2013 data lives beside the repo in ../shared/data")
    with np.load(FER2013_NPZ) as data:
        x_train, y_train = random_subset(data["x_train"], data["y_train"], TRAIN_FACES, seed=1)
        x_val, y_val = random_subset(data["x_val"], data["y_val"], VALIDATION_FACES, seed=2)
    return TrainingData(x_train, y_train, validation={"collected": (x_val[:8], y_val[:8]), "fer2013": (x_val, y_val)})


@pytest.fixture(scope="module")
def pretrained_keras() -> Path:
    registry = ModelRegistry(REPO_STORE)
    try:
        entry = registry.get("1.0.0")
        registry.verify(entry)
    except RegistryError as error:  # absent or corrupt: nothing to fine-tune
        pytest.skip(f"models/store has no verified 1.0.0 ({error}); run 'emq-model import-pretrained'")
    return registry.path_of(entry, "keras")


def test_fine_tuning_one_epoch_reports_history_and_keeps_the_model_useful(
    fer2013: TrainingData, pretrained_keras: Path
) -> None:
    # Also the regression test for the oneDNN crash: training the stock graph
    # (1x1 stride-2 shortcuts) aborted the process in TensorFlow 2.21.
    lines: list[str] = []
    settings = TrainingSettings(epochs=1, batch_size=64, learning_rate=1e-4, time_budget_s=600, seed=7)  # a budget that never stops it

    run = train(fer2013, settings=settings, start_from=pretrained_keras, progress=lines.append)

    assert run.epochs_run == 1 and run.stopped_reason == "epochs"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_fer2013_accuracy", "val_collected_accuracy"):
        assert len(run.history[key]) == 1, key
    # 'collected' has 8 faces, too few to steer early stopping: the FER2013 sample does.
    assert run.monitored_set == "fer2013" and run.history["val_loss"] == run.history["val_fer2013_loss"]
    assert run.best_epoch == 1
    assert run.images_per_second > 0 and run.seconds > 0
    assert run.history["val_accuracy"][0] > 0.5  # the pretrained model scores ~0.65; one gentle epoch keeps it
    assert any(line.startswith("epoch 1/1") for line in lines)
    # The returned model has the canonical layout, so it saves and exports like 1.0.0.
    assert not any(isinstance(layer, SubsampledPointwiseConv2D) for layer in run.model.layers)
    assert [layer.name for layer in run.model.layers] == [layer.name for layer in build_mini_xception().layers]


def test_a_tiny_time_budget_stops_mid_epoch_with_a_usable_model(fer2013: TrainingData) -> None:
    settings = TrainingSettings(epochs=5, batch_size=64, learning_rate=1e-3, time_budget_s=0.01, from_scratch=True)

    run = train(fer2013, settings=settings, progress=None)

    assert run.stopped_reason == "time_budget"
    assert run.epochs_run == 1
    assert run.history["train_images"][0] < TRAIN_FACES  # stopped after the first batch, not at the epoch's end
    probabilities = run.model.predict(probe_batch(count=4), verbose=0)
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_the_same_seed_gives_the_same_weights(fer2013: TrainingData) -> None:
    small = TrainingData(fer2013.x_train[:128], fer2013.y_train[:128])
    settings = TrainingSettings(epochs=1, batch_size=32, learning_rate=1e-3, from_scratch=True, seed=3)

    first, second = (train(small, settings=settings, progress=None) for _ in range(2))

    assert first.history["loss"] == second.history["loss"]
    for first_weights, second_weights in zip(first.model.get_weights(), second.model.get_weights()):
        np.testing.assert_array_equal(first_weights, second_weights)


def test_early_stopping_stops_after_patience_and_restores_the_best_weights() -> None:
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    callback = _EarlyStoppingWithBestWeights(patience=2, total_epochs=10)
    callback.set_model(model)
    model.stop_training = False
    kernel_per_epoch = []
    for epoch, validation_loss in enumerate([1.0, 0.5, 0.7, 0.9]):
        model.layers[0].kernel.assign([[float(epoch)]])
        kernel_per_epoch.append(float(epoch))
        callback.on_epoch_end(epoch, {"val_loss": validation_loss})

    assert model.stop_training and callback.stopped
    callback.on_train_end()
    assert float(model.layers[0].kernel.numpy()[0, 0]) == kernel_per_epoch[1]  # the epoch with loss 0.5
    assert callback.best_epoch == 1


def test_running_out_of_epochs_is_not_reported_as_early_stopping() -> None:
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    callback = _EarlyStoppingWithBestWeights(patience=1, total_epochs=2)
    callback.set_model(model)
    model.stop_training = False
    callback.on_epoch_end(0, {"val_loss": 1.0})
    callback.on_epoch_end(1, {"val_loss": 2.0})  # worse, but it was the last epoch anyway

    assert not callback.stopped


def test_the_training_graph_computes_the_same_function_with_the_same_weights() -> None:
    keras.utils.set_random_seed(3)
    model = build_mini_xception()
    trainable = training_graph(model)
    inputs = probe_batch(count=8, seed=5)

    assert sum(isinstance(layer, SubsampledPointwiseConv2D) for layer in trainable.layers) == 4
    np.testing.assert_allclose(trainable.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-6)


def test_augmentation_geometry_identity_and_mirror() -> None:
    faces = tf.constant(probe_batch(count=3, seed=9))
    zeros, ones = tf.zeros([3]), tf.ones([3])
    size = tf.constant(64.0)

    def warp(flip: tf.Tensor) -> np.ndarray:
        transforms = _output_to_input_transforms(zeros, ones, ones, zeros, zeros, flip, size, size)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=faces, transforms=transforms, output_shape=[64, 64], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="NEAREST",
        ).numpy()

    np.testing.assert_allclose(warp(ones), faces.numpy(), atol=1e-6)
    np.testing.assert_allclose(warp(-ones), faces.numpy()[:, :, ::-1, :], atol=1e-6)


def test_augmentation_is_seeded_and_stays_in_range() -> None:
    faces = tf.constant(probe_batch(count=16, seed=4))

    first = augment_faces(faces, tf.constant([1, 2])).numpy()
    again = augment_faces(faces, tf.constant([1, 2])).numpy()
    other = augment_faces(faces, tf.constant([3, 4])).numpy()

    assert first.shape == faces.shape
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert first.min() >= -1.0 - 1e-6 and first.max() <= 1.0 + 1e-6


def test_the_pipeline_is_reproducible_and_reshuffles_every_epoch() -> None:
    faces = np.random.default_rng(0).integers(0, 256, size=(40, 64, 64), dtype=np.uint8)
    labels = np.arange(40, dtype=np.int64) % 7

    def epochs(seed: int) -> list[np.ndarray]:
        dataset = training_dataset(faces, labels, batch_size=8, seed=seed, augment=True)
        return [np.concatenate([batch_labels.numpy() for _, batch_labels in dataset]) for _ in range(2)]

    first_run, second_run = epochs(seed=5), epochs(seed=5)
    np.testing.assert_array_equal(first_run[0], second_run[0])
    np.testing.assert_array_equal(first_run[1], second_run[1])
    assert not np.array_equal(first_run[0], first_run[1])
    assert sorted(first_run[0].tolist()) == sorted(labels.tolist())  # every face once per epoch


def test_model_inputs_use_the_edge_preprocessing() -> None:
    crops = np.random.default_rng(1).integers(0, 256, size=(3, 48, 48), dtype=np.uint8)

    np.testing.assert_array_equal(model_inputs(crops), normalize_faces(resize_faces(crops)))
    already = normalize_faces(resize_faces(crops))
    assert model_inputs(already) is already


@pytest.mark.parametrize(
    ("faces", "labels", "message"),
    [
        (np.zeros((4, 64, 64), np.float64), np.zeros(4, np.int64), "uint8"),
        (np.zeros((4, 64, 64), np.uint8), np.array([0, 1, 2, 7]), r"\[0, 6\]"),
        (np.zeros((4, 64, 64), np.uint8), np.zeros(3, np.int64), "4 faces but 3 labels"),
        (np.zeros((0, 64, 64), np.uint8), np.zeros(0, np.int64), "empty"),
        (np.zeros((4, 64, 64), np.uint8), np.zeros(4, np.float32), "integer"),
    ],
)
def test_training_data_rejects_unusable_input(faces: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingData(faces, labels)


def test_the_first_large_enough_validation_set_steers_early_stopping() -> None:
    def labelled(count: int) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((count, 64, 64), np.uint8), np.zeros(count, np.int64)

    assert choose_monitored_set({"collected": labelled(30), "fer2013": labelled(300)}) == "collected"
    assert choose_monitored_set({"collected": labelled(5), "fer2013": labelled(300)}) == "fer2013"
    assert choose_monitored_set({"collected": labelled(0), "other": labelled(5)}) == "other"
    assert choose_monitored_set({}) is None


def test_fine_tuning_needs_a_starting_model(fer2013: TrainingData) -> None:
    with pytest.raises(ValueError, match="start_from"):
        train(fer2013, TrainingSettings(epochs=1), start_from=None, progress=None)
