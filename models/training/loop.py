"""The training loop: fine-tune (or train from scratch) the mini-Xception emotion classifier.

    data = TrainingData(x_train, y_train, validation={"collected": (x, y), "selection": (x, y)})
    run = train(data, TrainingSettings(epochs=2, time_budget_s=120), start_from=Path(".../model.keras"))
    run.model, run.history, run.stopped_reason, run.images_per_second

Early stopping watches the loss of the first validation set with enough faces
(put the selection set first; never the gate's set) and the returned model
holds the weights of the best epoch. A time budget stops training mid-epoch if
needed, a target accuracy at an epoch end; either way the model is usable.
With ``checkpoint_dir`` an interrupted run resumes at its last finished epoch.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from contract.emotions import NUM_EMOTIONS
from models.architecture import build_mini_xception
from models.training.augmentation import training_dataset
from models.training.callbacks import (
    ProgressReporter,
    _BestWeightsCheckpoint,
    _EarlyStoppingWithBestWeights,
    _ProgressLog,
    _TargetAccuracy,
    _ThroughputMeter,
    _TimeBudget,
    _ValidationEvaluator,
)
from models.training.data import MIN_VALIDATION_SAMPLES, LabelledFaces, TrainingData, TrainingSettings, model_inputs, validation_inputs
from models.training.graph import copy_weights, training_graph
from runtime.preprocess import FACE_SIZE

logger = logging.getLogger(__name__)

StoppedReason = str  # "epochs" | "early_stopping" | "time_budget" | "target"


def print_progress(line: str) -> None:
    """Default progress reporter: one line on stderr, flushed so it shows in job logs at once."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class TrainingRun:
    """What ``train`` returns."""

    model: keras.Model  # canonical build_mini_xception layout, best weights
    history: dict[str, list[float]]  # per epoch: loss, accuracy, val_loss, val_accuracy, val_<set>_*, epoch_seconds
    epochs_run: int
    seconds: float  # wall time of the whole train() call
    stopped_reason: StoppedReason
    images_per_second: float  # training steps only (no validation, no set-up)
    best_epoch: int | None  # 1-based epoch whose weights the model holds; None without validation
    monitored_set: str | None  # validation set whose loss steered early stopping
    settings: TrainingSettings
    train_count: int

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary of the run (settings included) for the model card and job logs."""
        return {
            "settings": self.settings.to_json(),
            "train_count": self.train_count,
            "epochs_run": self.epochs_run,
            "stopped_reason": self.stopped_reason,
            "best_epoch": self.best_epoch,
            "monitored_set": self.monitored_set,
            "seconds": round(self.seconds, 2),
            "images_per_second": round(self.images_per_second, 1),
        }


# -- training ---------------------------------------------------------------------------------


def train(
    data: TrainingData,
    settings: TrainingSettings = TrainingSettings(),
    start_from: Path | None = None,
    progress: ProgressReporter | None = print_progress,
    teacher: Path | None = None,
) -> TrainingRun:
    """Fine-tune a saved model, or train a new one, on ``data``.

    # Arguments
        data: Training faces and named validation sets (see ``TrainingData``).
        settings: Epochs, batch size, learning rate, patience, time budget,
            seed, augmentation and whether to start from scratch.
        start_from: A ``.keras`` file to fine-tune (e.g. the registry's
            ``<store>/1.0.0/model.keras``).  Required unless
            ``settings.from_scratch``; ignored (with a warning) if it is set.
        progress: Called with one human-readable line per epoch and, during
            long epochs, every ``settings.progress_interval_s``; ``None`` is silent.
        teacher: A ``.keras`` file whose answers ``settings.distillation`` blends into the
            targets instead of the starting model's (a from-scratch student needs one). Its
            answer is the mean over the face and its mirror, so a face and its flipped copy
            (an augmentation) get the same target.

    # Returns
        A ``TrainingRun``: the trained model (same layer layout as
        ``build_mini_xception``, holding the weights of the epoch with the
        lowest monitored validation loss), the per-epoch history, how many
        epochs ran, the wall time, why training stopped ("epochs",
        "early_stopping" or "time_budget") and the training throughput.
    """
    started = time.monotonic()
    report = progress or (lambda line: None)
    keras.utils.set_random_seed(settings.seed)
    canonical = _initial_model(settings, start_from)
    targets = _targets(data, settings, canonical, _teacher_model(teacher))
    trainable = training_graph(canonical)
    if settings.freeze_batch_norm:
        # Keras 3: a non-trainable BatchNormalization runs in inference mode (the stored statistics).
        for layer in trainable.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    steps_per_epoch = math.ceil(len(data.y_train) / settings.batch_size)
    _compile(trainable, settings, steps_per_epoch)

    dataset = training_dataset(
        data.x_train, targets, settings.batch_size, settings.seed, settings.augment,
        random_erasing=settings.random_erasing, mixup_alpha=settings.mixup_alpha, one_hot=_one_hot_targets(settings),
    )
    validation_sets = validation_inputs(data.validation)
    monitored = _monitored(validation_sets, settings)
    monitored_set = monitored if monitored is None or isinstance(monitored, str) else f"mean({', '.join(monitored)})"
    report(_start_line(data, settings, start_from, monitored_set, teacher))
    callbacks = _TrainingCallbacks.create(settings, len(data.y_train), validation_sets, monitored, started, report)
    # shuffle=False: the dataset shuffles itself (seeded); Keras cannot shuffle a tf.data pipeline.
    history = trainable.fit(dataset, epochs=settings.epochs, verbose=0, callbacks=callbacks.as_list(), shuffle=False)

    copy_weights(trainable, canonical)
    run = TrainingRun(
        model=canonical,
        history={key: [float(value) for value in values] for key, values in history.history.items()},
        epochs_run=len(history.history.get("loss", [])),
        seconds=time.monotonic() - started,
        stopped_reason=callbacks.stopped_reason(),
        images_per_second=callbacks.throughput.images_per_second(),
        best_epoch=callbacks.best_epoch(),
        monitored_set=monitored_set,
        settings=settings,
        train_count=len(data.y_train),
    )
    report(_end_line(run))
    return run


def _initial_model(settings: TrainingSettings, start_from: Path | None) -> keras.Model:
    """A new mini-Xception, or the saved model to fine-tune."""
    if settings.from_scratch:
        if start_from is not None:
            logger.warning("from_scratch is set: ignoring start_from=%s", start_from)
        return build_mini_xception()
    if start_from is None:
        raise ValueError("start_from (a .keras file) is required unless settings.from_scratch is true")
    # compile=False: the optimizer state of the saved file is not wanted (and
    # Arriaga's original Keras 2 optimizer config cannot be deserialised).
    model = keras.models.load_model(Path(start_from), compile=False)
    if tuple(model.input_shape[1:]) != (FACE_SIZE, FACE_SIZE, 1) or model.output_shape[-1] != NUM_EMOTIONS:
        raise ValueError(
            f"{start_from}: expected a (64, 64, 1) -> {NUM_EMOTIONS} classifier, "
            f"got {model.input_shape} -> {model.output_shape}"
        )
    return model


def _one_hot_targets(settings: TrainingSettings) -> bool:
    """Label smoothing, mixup and distillation need one-hot (soft) targets; plain training keeps integer labels."""
    return settings.label_smoothing > 0 or settings.mixup_alpha > 0 or settings.distillation > 0


def _teacher_model(path: Path | None) -> keras.Model | None:
    return None if path is None else keras.models.load_model(Path(path), compile=False)


def _targets(data: TrainingData, settings: TrainingSettings, start: keras.Model, teacher: keras.Model | None = None) -> np.ndarray:
    """Integer labels, or with ``distillation`` soft targets: the label blended with the teacher's answer.

    The teacher is ``teacher`` if given, else the starting model (fine-tuning). Its probabilities
    are recorded once, on the un-augmented faces, before any training step (as Learning without
    Forgetting records the old network's responses).
    """
    if settings.distillation <= 0:
        return data.y_train
    if settings.from_scratch and teacher is None:
        logger.warning("distillation needs a teacher: ignored when training from scratch without one")
        return data.y_train
    mask = np.ones(len(data.y_train), bool) if data.distill is None else np.asarray(data.distill, bool)
    targets = np.eye(NUM_EMOTIONS, dtype=np.float32)[np.asarray(data.y_train, np.int64)]
    if mask.any():
        faces = model_inputs(data.x_train[mask])
        answers = start.predict(faces, batch_size=256, verbose=0) if teacher is None else _mirror_mean(teacher, faces)
        targets[mask] = (1.0 - settings.distillation) * targets[mask] + settings.distillation * answers.astype(np.float32)
    return targets


def _mirror_mean(model: keras.Model, faces: np.ndarray) -> np.ndarray:
    """The model's probabilities averaged over each face and its mirror image."""
    plain = model.predict(faces, batch_size=256, verbose=0)
    mirrored = model.predict(faces[:, :, ::-1], batch_size=256, verbose=0)
    return (plain + mirrored) / 2.0


def _monitored(validation_sets: Mapping[str, LabelledFaces], settings: TrainingSettings) -> str | tuple[str, ...] | None:
    """The set early stopping watches, or with ``early_stopping_on="mean"`` every set big enough (their mean loss)."""
    if settings.early_stopping_on == "mean":
        big = tuple(name for name, (_, labels) in validation_sets.items() if len(labels) >= MIN_VALIDATION_SAMPLES)
        if len(big) > 1:
            return big
        if len(big) == 1:
            return big[0]
    return choose_monitored_set(validation_sets)


def _compile(model: keras.Model, settings: TrainingSettings, steps_per_epoch: int) -> None:
    if _one_hot_targets(settings):
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing)
        accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate_schedule(settings, steps_per_epoch)),
                  loss=loss, metrics=[accuracy])


def learning_rate_schedule(settings: TrainingSettings, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A constant rate, or cosine decay to 0 over the whole run after a linear warm-up (Loshchilov & Hutter)."""
    if settings.schedule == "constant":
        return settings.learning_rate
    warmup_steps = settings.warmup_epochs * steps_per_epoch
    decay_steps = max(settings.epochs * steps_per_epoch - warmup_steps, 1)
    if not warmup_steps:
        return keras.optimizers.schedules.CosineDecay(settings.learning_rate, decay_steps)
    return keras.optimizers.schedules.CosineDecay(
        settings.learning_rate / 100, decay_steps, warmup_target=settings.learning_rate, warmup_steps=warmup_steps,
    )


def choose_monitored_set(validation_sets: Mapping[str, LabelledFaces]) -> str | None:
    """The first validation set big enough to steer early stopping, else the first non-empty one."""
    non_empty = [name for name, (_, labels) in validation_sets.items() if len(labels) > 0]
    large_enough = [name for name in non_empty if len(validation_sets[name][1]) >= MIN_VALIDATION_SAMPLES]
    if large_enough and non_empty and large_enough[0] != non_empty[0]:
        logger.warning(
            "validation set %r has fewer than %d faces; early stopping watches %r instead",
            non_empty[0],
            MIN_VALIDATION_SAMPLES,
            large_enough[0],
        )
    if large_enough:
        return large_enough[0]
    return non_empty[0] if non_empty else None


@dataclass
class _TrainingCallbacks:
    """The callbacks of one ``train`` call, kept by name so their findings can be read afterwards."""

    throughput: _ThroughputMeter
    validation: _ValidationEvaluator
    early_stopping: _EarlyStoppingWithBestWeights
    target: _TargetAccuracy
    time_budget: _TimeBudget
    progress: _ProgressLog
    resume: list[keras.callbacks.Callback]

    @classmethod
    def create(
        cls,
        settings: TrainingSettings,
        train_count: int,
        validation_sets: Mapping[str, LabelledFaces],
        monitored_set: str | tuple[str, ...] | None,
        started: float,
        report: ProgressReporter,
    ) -> _TrainingCallbacks:
        throughput = _ThroughputMeter(settings.batch_size, train_count)
        steps_per_epoch = math.ceil(train_count / settings.batch_size)
        early_stopping = _EarlyStoppingWithBestWeights(settings.patience, settings.epochs, settings.keep_last)
        return cls(
            throughput=throughput,
            validation=_ValidationEvaluator(validation_sets, monitored_set),
            early_stopping=early_stopping,
            target=_TargetAccuracy(settings.target_accuracy),
            time_budget=_TimeBudget(settings.time_budget_s, started, settings.epochs),
            progress=_ProgressLog(report, settings.epochs, steps_per_epoch, settings.progress_interval_s, throughput),
            resume=_resume_callbacks(settings.checkpoint_dir, early_stopping),
        )

    def as_list(self) -> list[keras.callbacks.Callback]:
        """In the order Keras must call them: each epoch-end step reads what the previous ones logged.

        The resume checkpoint comes first: ``BackupAndRestore`` restores the
        weights, the optimizer and the epoch counter before the first epoch.
        The best-weights checkpoint comes right after early stopping, so it
        saves the state of the epoch that just ended, not of the one before.
        """
        backup, best_weights = self.resume[:1], self.resume[1:]
        return [*backup, self.throughput, self.validation, self.early_stopping, *best_weights, self.target, self.time_budget,
                self.progress]

    def stopped_reason(self) -> StoppedReason:
        if self.target.reached_at is not None:
            return "target"
        if self.time_budget.triggered:
            return "time_budget"
        if self.early_stopping.stopped:
            return "early_stopping"
        return "epochs"

    def best_epoch(self) -> int | None:
        """1-based epoch whose weights the model ends with; None without a validation loss."""
        best = self.early_stopping.best_epoch
        return None if best is None else best + 1


def _resume_callbacks(directory: Path | None, early_stopping: _EarlyStoppingWithBestWeights) -> list[keras.callbacks.Callback]:
    """Epoch checkpoints to resume an interrupted run from (weights, optimizer, epoch, best weights so far)."""
    if directory is None:
        return []
    return [keras.callbacks.BackupAndRestore(str(directory / "backup"), save_freq="epoch", delete_checkpoint=True),
            _BestWeightsCheckpoint(directory, early_stopping)]


def _start_line(
    data: TrainingData, settings: TrainingSettings, start_from: Path | None, monitored_set: str | None,
    teacher: Path | None = None,
) -> str:
    origin = "from scratch" if settings.from_scratch else f"fine-tuning {start_from}"
    if settings.distillation > 0:
        origin += f", distilling {settings.distillation:g} from {teacher or start_from}"
    sets = ", ".join(f"{name} {len(labels)}" for name, (_, labels) in data.validation.items()) or "none"
    budget = f"{settings.time_budget_s:.0f} s" if settings.time_budget_s is not None else "none"
    return (
        f"training {origin}: {len(data.y_train)} faces, up to {settings.epochs} epochs of batch {settings.batch_size}, "
        f"lr {settings.learning_rate:g} ({settings.schedule}), augment {settings.augment}, time budget {budget}, "
        f"label smoothing {settings.label_smoothing:g}, mixup {settings.mixup_alpha:g}, erasing {settings.random_erasing:g}, "
        f"target {settings.target_accuracy or 'none'}; "
        f"validation: {sets}; early stopping on {monitored_set or 'nothing'} (patience {settings.patience})"
    )


def _end_line(run: TrainingRun) -> str:
    best = f", best epoch {run.best_epoch} on {run.monitored_set}" if run.best_epoch is not None else ""
    return (
        f"training stopped ({run.stopped_reason}) after {run.epochs_run} epoch(s), {run.seconds:.1f} s, "
        f"{run.images_per_second:.0f} img/s{best}"
    )
