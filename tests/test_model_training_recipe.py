"""The base-model recipe: random erasing, mixup, label smoothing, the cosine schedule, a target accuracy
that ends the run, and a run that resumes after being killed. Small and fast (a few hundred faces)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="training needs the 'train' extra (tensorflow-cpu, keras)")

import tensorflow as tf

from models.training import (
    TrainingSettings,
    erase_random_rectangles,
    learning_rate_schedule,
    mix_up,
    train,
    training_dataset,
)
from models.training.callbacks import _ProgressLog
from tests.test_model_training import fer2013, pretrained_keras  # noqa: F401 (fixtures)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]


def faces_batch(count: int = 16, seed: int = 0) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).uniform(-1, 1, (count, 64, 64, 1)).astype(np.float32))


def test_random_erasing_changes_one_bounded_rectangle_per_chosen_face_and_is_seeded() -> None:
    faces = tf.zeros((32, 64, 64, 1))
    erased = erase_random_rectangles(faces, tf.constant([1, 2]), probability=1.0).numpy()
    again = erase_random_rectangles(faces, tf.constant([1, 2]), probability=1.0).numpy()
    assert np.array_equal(erased, again)
    changed = (erased != 0).reshape(32, -1).mean(axis=1)
    assert changed.min() > 0.01 and changed.max() <= 0.26  # 2-25 % of the face
    rows, columns = np.nonzero(erased[0, :, :, 0])
    assert (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1) == len(rows)  # one rectangle
    untouched = erase_random_rectangles(faces, tf.constant([1, 2]), probability=0.0).numpy()
    assert not untouched.any()


def test_mixup_keeps_each_face_mostly_itself_and_targets_summing_to_one() -> None:
    faces = faces_batch()
    targets = tf.one_hot(np.arange(16) % 7, 7)
    mixed_faces, mixed_targets = mix_up(faces, targets, tf.constant([3, 4]), alpha=0.4)
    mixed_targets = mixed_targets.numpy()
    assert np.allclose(mixed_targets.sum(axis=1), 1.0)
    own = mixed_targets[np.arange(16), np.arange(16) % 7]
    assert own.min() >= 0.5 - 1e-6  # the own label keeps at least half the weight
    assert not np.allclose(mixed_faces.numpy(), faces.numpy())


def test_one_hot_batches_for_label_smoothing_and_mixup(fer2013) -> None:  # noqa: F811
    dataset = training_dataset(fer2013.x_train, fer2013.y_train, 32, seed=1, augment=True, random_erasing=0.5, mixup_alpha=0.2)
    faces, targets = next(iter(dataset))
    assert faces.shape == (32, 64, 64, 1) and targets.shape == (32, 7)
    assert np.allclose(targets.numpy().sum(axis=1), 1.0)


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    settings = TrainingSettings(epochs=10, learning_rate=1e-3, schedule="cosine", warmup_epochs=1)
    schedule = learning_rate_schedule(settings, steps_per_epoch=100)
    rates = [float(schedule(step)) for step in (0, 100, 550, 999)]
    assert rates[0] < 1e-4 and abs(rates[1] - 1e-3) < 1e-6  # warm-up reaches the peak after one epoch
    assert rates[1] > rates[2] > rates[3] and rates[3] < 1e-5
    assert learning_rate_schedule(TrainingSettings(learning_rate=2e-4), 100) == 2e-4


def test_bad_recipe_settings_are_refused() -> None:
    for bad in ({"label_smoothing": 1.0}, {"mixup_alpha": -1}, {"random_erasing": 1.5}, {"schedule": "step"},
                {"warmup_epochs": 10, "epochs": 10}, {"target_accuracy": 0.0}):
        with pytest.raises(ValueError):
            TrainingSettings(**bad)


def test_a_reached_target_accuracy_ends_the_run(fer2013, pretrained_keras) -> None:  # noqa: F811
    settings = TrainingSettings(epochs=5, time_budget_s=3600, target_accuracy=0.3, label_smoothing=0.1)
    run = train(fer2013, settings=settings, start_from=pretrained_keras, progress=None)
    assert run.stopped_reason == "target" and run.epochs_run == 1  # the pretrained model is above 30 % at once
    assert run.summary()["settings"]["target_accuracy"] == 0.3


def test_a_killed_run_resumes_from_its_last_epoch(fer2013, pretrained_keras, tmp_path, monkeypatch) -> None:  # noqa: F811
    settings = TrainingSettings(epochs=3, time_budget_s=3600, checkpoint_dir=tmp_path / "checkpoint")
    original = _ProgressLog.on_epoch_end

    def killed_after_the_second_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(_ProgressLog, "on_epoch_end", killed_after_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(fer2013, settings=settings, start_from=pretrained_keras, progress=None)
    state = json.loads((tmp_path / "checkpoint" / "early-stopping.json").read_text())
    assert state["best_epoch"] in (0, 1)  # the state of the epochs that ended, saved after early stopping saw them
    assert (tmp_path / "checkpoint" / "best.weights.npz").exists()
    monkeypatch.setattr(_ProgressLog, "on_epoch_end", original)

    lines: list[str] = []
    resumed = train(fer2013, settings=settings, start_from=pretrained_keras, progress=lines.append)
    assert resumed.epochs_run == 1  # only the third epoch was left
    assert any(line.startswith("epoch 3/3") for line in lines) and not any(line.startswith("epoch 1/3") for line in lines)
    assert resumed.best_epoch is not None
    assert not (tmp_path / "checkpoint" / "early-stopping.json").exists()  # a finished run leaves no resume state


# -- fine-tuning without forgetting ----------------------------------------------------------------


def test_soft_targets_pass_through_the_pipeline_unchanged() -> None:
    faces = np.random.default_rng(0).integers(0, 256, (8, 64, 64), dtype=np.uint8)
    soft = np.random.default_rng(1).dirichlet(np.ones(7), 8).astype(np.float32)
    (_, targets), = list(training_dataset(faces, soft, 8, seed=1, augment=False))
    # The batch is shuffled: compare row sets (each row is a distinct random distribution).
    np.testing.assert_allclose(targets.numpy()[np.argsort(targets.numpy()[:, 0])], soft[np.argsort(soft[:, 0])], atol=1e-7)


def test_distillation_blends_the_marked_faces_targets_with_the_starting_model(fer2013, pretrained_keras) -> None:  # noqa: F811
    import keras

    from models.training import TrainingData, model_inputs
    from models.training.loop import _targets

    mask = np.arange(len(fer2013.y_train)) % 2 == 0
    data = TrainingData(fer2013.x_train, fer2013.y_train, fer2013.validation, distill=mask)
    model = keras.models.load_model(pretrained_keras, compile=False)
    targets = _targets(data, TrainingSettings(distillation=0.5), model)
    one_hot = np.eye(7)[fer2013.y_train]
    np.testing.assert_allclose(targets[~mask], one_hot[~mask])  # unmarked faces keep their label
    teacher = model.predict(model_inputs(fer2013.x_train[mask]), verbose=0)
    np.testing.assert_allclose(targets[mask], 0.5 * one_hot[mask] + 0.5 * teacher, atol=1e-5)
    assert _targets(data, TrainingSettings(), model) is data.y_train  # off by default: integer labels
    with pytest.raises(ValueError, match="distill"):
        TrainingData(fer2013.x_train, fer2013.y_train, distill=mask[:-1])


def test_a_teacher_gives_a_from_scratch_student_the_mean_of_its_answers_on_face_and_mirror(fer2013, pretrained_keras) -> None:  # noqa: F811
    import keras

    from models.architecture import build_mini_xception
    from models.training import TrainingData, model_inputs
    from models.training.loop import _targets

    # Each face next to its mirror image, with the same label.
    x_train = np.concatenate([fer2013.x_train, fer2013.x_train[:, :, ::-1]])
    y_train = np.concatenate([fer2013.y_train, fer2013.y_train])
    data = TrainingData(x_train, y_train, fer2013.validation)
    teacher = keras.models.load_model(pretrained_keras, compile=False)
    student = build_mini_xception()
    settings = TrainingSettings(distillation=0.5, from_scratch=True)
    assert _targets(data, settings, student) is data.y_train  # from scratch without a teacher: plain labels
    targets = _targets(data, settings, student, teacher)
    faces = model_inputs(x_train)
    answers = (teacher.predict(faces, verbose=0) + teacher.predict(faces[:, :, ::-1, :], verbose=0)) / 2
    np.testing.assert_allclose(targets, 0.5 * np.eye(7)[y_train] + 0.5 * answers, atol=1e-5)
    # A face and its mirror image get the same target (the flip augmentation keeps the target right) ...
    count = len(fer2013.y_train)
    np.testing.assert_allclose(targets[:count], targets[count:], atol=1e-5)
    # ... which the teacher's plain answers would not give.
    plain = teacher.predict(faces, verbose=0)
    assert not np.allclose(plain[:count], plain[count:], atol=1e-3)


def test_frozen_batch_norm_mean_early_stopping_and_distillation_train(fer2013, pretrained_keras) -> None:  # noqa: F811
    import keras

    settings = TrainingSettings(epochs=1, time_budget_s=600, distillation=0.5, freeze_batch_norm=True, early_stopping_on="mean",
                                label_smoothing=0.1)
    run = train(fer2013, settings=settings, start_from=pretrained_keras, progress=None)
    # 'collected' has 8 faces (too few): the mean is over the one big-enough set, FER2013's.
    assert run.monitored_set == "fer2013" and run.history["val_loss"] == run.history["val_fer2013_loss"]
    start = keras.models.load_model(pretrained_keras, compile=False)
    for layer in run.model.layers:  # frozen batch norm: statistics and scales as they were
        if isinstance(layer, keras.layers.BatchNormalization):
            for mine, theirs in zip(layer.get_weights(), start.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(mine, theirs)
    assert run.summary()["settings"]["distillation"] == 0.5


def test_mean_early_stopping_watches_every_big_enough_set() -> None:
    from models.training.loop import _monitored

    sets = {"collected": (None, np.zeros(30)), "fer2013": (None, np.zeros(300)), "tiny": (None, np.zeros(3))}
    assert _monitored(sets, TrainingSettings(early_stopping_on="mean")) == ("collected", "fer2013")
    assert _monitored(sets, TrainingSettings()) == "collected"
    with pytest.raises(ValueError):
        TrainingSettings(early_stopping_on="last")
    with pytest.raises(ValueError):
        TrainingSettings(distillation=1.0)
