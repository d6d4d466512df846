"""The callbacks of a training run: throughput, validation on every set, early stopping with the best
weights, a time budget, a target accuracy, resumable state, and progress lines."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from models.training.data import LabelledFaces

VALIDATION_BATCH_SIZE = 256
# Probabilities are clipped like Keras' cross-entropy does, so a confident
# mistake costs a large but finite loss.
PROBABILITY_EPSILON = 1e-7
ProgressReporter = Callable[[str], None]
NO_LOSS_YET = 1e30  # JSON has no infinity


def loss_and_accuracy(model: keras.Model, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy (without the L2 penalty) and top-1 accuracy of ``model`` on a labelled set."""
    probabilities = model.predict(inputs, batch_size=VALIDATION_BATCH_SIZE, verbose=0)
    true_class_probability = np.clip(probabilities[np.arange(len(labels)), labels], PROBABILITY_EPSILON, 1.0)
    loss = float(np.mean(-np.log(true_class_probability)))
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == labels))
    return loss, accuracy



class _ThroughputMeter(keras.callbacks.Callback):
    """Times the training steps of each epoch (not validation) and counts the faces they processed.

    Adds ``train_seconds`` and ``train_images`` to the epoch logs, hence to the history.
    """

    def __init__(self, batch_size: int, train_count: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.train_count = train_count
        self.epoch_started = 0.0
        self.last_batch_ended = 0.0
        self.epoch_images = 0
        self.total_images = 0
        self.total_seconds = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch_started = self.last_batch_ended = time.monotonic()
        self.epoch_images = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.last_batch_ended = time.monotonic()
        self.epoch_images = min((batch + 1) * self.batch_size, self.train_count)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        train_seconds = self.last_batch_ended - self.epoch_started
        self.total_images += self.epoch_images
        self.total_seconds += train_seconds
        if logs is not None:
            logs["train_seconds"] = train_seconds
            logs["train_images"] = float(self.epoch_images)

    def current_rate(self) -> float:
        elapsed = self.last_batch_ended - self.epoch_started
        return self.epoch_images / elapsed if elapsed > 0 else 0.0

    def images_per_second(self) -> float:
        return self.total_images / self.total_seconds if self.total_seconds > 0 else 0.0


class _ValidationEvaluator(keras.callbacks.Callback):
    """Adds ``val_<set>_loss``/``val_<set>_accuracy`` for every non-empty set, and
    ``val_loss``/``val_accuracy`` for the monitored one, to the epoch logs (hence the history)."""

    def __init__(self, validation_sets: Mapping[str, LabelledFaces], monitored_set: str | tuple[str, ...] | None) -> None:
        super().__init__()
        self.validation_sets = {name: pair for name, pair in validation_sets.items() if len(pair[1]) > 0}
        # A tuple of names: val_loss/val_accuracy are the means over those sets.
        self.monitored = (monitored_set,) if isinstance(monitored_set, str) else tuple(monitored_set or ())

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            return
        losses, accuracies = [], []
        for name, (inputs, labels) in self.validation_sets.items():
            loss, accuracy = loss_and_accuracy(self.model, inputs, labels)
            logs[f"val_{name}_loss"] = loss
            logs[f"val_{name}_accuracy"] = accuracy
            if name in self.monitored:
                losses.append(loss)
                accuracies.append(accuracy)
        if losses:
            logs["val_loss"] = float(np.mean(losses))
            logs["val_accuracy"] = float(np.mean(accuracies))


class _EarlyStoppingWithBestWeights(keras.callbacks.Callback):
    """Stop after ``patience`` epochs without a lower ``val_loss``; end with the best epoch's weights.

    Unlike ``keras.callbacks.EarlyStopping`` it also restores the best weights
    when training ends for another reason (epochs exhausted, time budget), so
    the returned model is always the best one seen, and it says whether it
    actually cut training short.
    """

    def __init__(self, patience: int, total_epochs: int, keep_last: bool = False) -> None:
        super().__init__()
        self.patience = patience
        self.keep_last = keep_last
        self.total_epochs = total_epochs
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.best_weights: list[np.ndarray] | None = None
        self.last_epoch: int | None = None
        self.epochs_without_improvement = 0
        self.stopped = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.last_epoch = epoch
        loss = (logs or {}).get("val_loss")
        if loss is None or not math.isfinite(loss):
            return
        if self.keep_last:  # every epoch runs and the last one's weights are the result
            self.best_loss, self.best_epoch = loss, epoch
            return
        if loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, epoch
            self.best_weights = self.model.get_weights()
            self.epochs_without_improvement = 0
            return
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement >= self.patience and epoch + 1 < self.total_epochs:
            self.model.stop_training = True
            self.stopped = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.best_weights is not None and self.best_epoch != self.last_epoch:
            self.model.set_weights(self.best_weights)


class _TimeBudget(keras.callbacks.Callback):
    """Stop training once ``budget_s`` has passed since ``started``, mid-epoch if need be.

    Keras still runs the epoch-end callbacks after a mid-epoch stop, so the
    partial epoch is validated and the best weights are kept.
    """

    def __init__(self, budget_s: float | None, started: float, total_epochs: int) -> None:
        super().__init__()
        self.budget_s = budget_s
        self.started = started
        self.total_epochs = total_epochs
        self.triggered = False

    def _exceeded(self) -> bool:
        return self.budget_s is not None and time.monotonic() - self.started > self.budget_s

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if not self.model.stop_training and self._exceeded():
            self.model.stop_training = True
            self.triggered = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # Only a stop that prevents a further epoch counts as the budget's doing.
        if not self.model.stop_training and epoch + 1 < self.total_epochs and self._exceeded():
            self.model.stop_training = True
            self.triggered = True


class _ProgressLog(keras.callbacks.Callback):
    """One line per epoch (Keras verbose=2 style) plus a line every ``interval_s`` inside long epochs."""

    def __init__(
        self, report: ProgressReporter, epochs: int, steps: int, interval_s: float, throughput: _ThroughputMeter
    ) -> None:
        super().__init__()
        self.report = report
        self.epochs = epochs
        self.steps = steps
        self.interval_s = interval_s
        self.throughput = throughput
        self.epoch_started = 0.0
        self.last_line = 0.0
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch
        self.epoch_started = self.last_line = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        if now - self.last_line < self.interval_s:
            return
        self.last_line = now
        rate = self.throughput.current_rate()
        remaining_s = (self.steps - batch - 1) * (now - self.epoch_started) / (batch + 1)
        metrics = _format_metrics(logs or {}, ("loss", "accuracy"))
        self.report(
            f"  epoch {self.epoch + 1}/{self.epochs} batch {batch + 1}/{self.steps} {metrics} "
            f"{rate:.0f} img/s, ~{remaining_s:.0f} s left in epoch"
        )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.monotonic() - self.epoch_started
        if logs is not None:
            logs["epoch_seconds"] = seconds
        shown = [key for key in (logs or {}) if not key.startswith("train_") and key != "epoch_seconds"]
        rate = self.throughput.current_rate()
        metrics = _format_metrics(logs or {}, shown)
        self.report(f"epoch {epoch + 1}/{self.epochs} - {seconds:.1f}s - {metrics} - {rate:.0f} img/s")


def _format_metrics(logs: Mapping[str, Any], keys: Any) -> str:
    return " - ".join(f"{key} {float(logs[key]):.4f}" for key in keys if key in logs)


class _TargetAccuracy(keras.callbacks.Callback):
    """Stop once the monitored validation set's accuracy reaches ``target`` (checked at each epoch end)."""

    def __init__(self, target: float | None) -> None:
        super().__init__()
        self.target = target
        self.reached_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        accuracy = (logs or {}).get("val_accuracy")
        if self.target is not None and accuracy is not None and accuracy >= self.target and self.reached_at is None:
            self.reached_at = epoch
            self.model.stop_training = True


class _BestWeightsCheckpoint(keras.callbacks.Callback):
    """Keeps the early-stopping state (best loss, epoch, weights) beside Keras' ``BackupAndRestore``
    checkpoint, so a resumed run still ends with the best weights seen before the interruption."""

    def __init__(self, directory: Path, early_stopping: "_EarlyStoppingWithBestWeights") -> None:
        super().__init__()
        self.directory = directory
        self.early_stopping = early_stopping
        self.state_file = directory / "early-stopping.json"
        self.weights_file = directory / "best.weights.npz"

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self.state_file.exists():
            return
        state = json.loads(self.state_file.read_text())
        stopping = self.early_stopping
        stopping.best_loss = math.inf if state["best_loss"] >= NO_LOSS_YET else state["best_loss"]
        stopping.best_epoch = state["best_epoch"]
        stopping.epochs_without_improvement = state["epochs_without_improvement"]
        if self.weights_file.exists():
            with np.load(self.weights_file) as stored:
                stopping.best_weights = [stored[f"w{index}"] for index in range(len(stored.files))]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        stopping = self.early_stopping
        self.directory.mkdir(parents=True, exist_ok=True)
        if stopping.best_weights is not None and stopping.best_epoch == epoch:
            temporary = self.weights_file.with_suffix(".tmp.npz")
            np.savez(temporary, **{f"w{index}": weights for index, weights in enumerate(stopping.best_weights)})
            temporary.replace(self.weights_file)
        state = {"best_loss": stopping.best_loss if math.isfinite(stopping.best_loss) else NO_LOSS_YET,
                 "best_epoch": stopping.best_epoch, "epochs_without_improvement": stopping.epochs_without_improvement}
        self.state_file.write_text(json.dumps(state))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # A run that ended (epochs, early stop, budget, target) needs no resume state; one that
        # was killed never gets here and resumes from it. Keras' BackupAndRestore does the same.
        for path in (self.state_file, self.weights_file):
            path.unlink(missing_ok=True)
