"""Fine-tune (or train from scratch) the mini-Xception emotion classifier.

This is the TensorFlow side of the retraining job::

    data = TrainingData(x_train, y_train, validation={"collected": (x, y), "fer2013": (x, y)})
    run = train(data, TrainingSettings(epochs=2, time_budget_s=120), start_from=Path(".../model.keras"))
    run.model, run.history, run.stopped_reason, run.images_per_second

What it does, and why:

* Inputs are ``runtime.preprocess.normalize_faces`` of uint8 grey faces (the
  same function the edge uses), so training and inference see the same pixels.
* Augmentation reproduces Arriaga's ``ImageDataGenerator`` (rotation 10 deg,
  shifts 10 %, independent x/y zoom 10 %, horizontal flip, nearest fill) as
  ONE random affine warp per image inside a ``tf.data`` map, on training
  batches only.  Composing the four transforms into one warp interpolates once
  (less blur and less work than chaining Keras' RandomRotation, RandomTranslation
  and RandomZoom layers, which resample the image three times); measured cost of
  augmentation on 2 cores: about 2 % of training throughput.
* Every random choice derives from ``TrainingSettings.seed``: the shuffle
  order, and the augmentation (a per-batch stateless seed from
  ``tf.data.Dataset.random``), so parallel map workers cannot reorder draws.
* Early stopping watches the loss of the first validation set with enough
  faces and the returned model holds the weights of the best epoch.  A time
  budget stops training mid-epoch if needed; the model is still usable.

A workaround lives here, too.  TensorFlow 2.21's oneDNN CPU kernels crash the
process (heap corruption / SIGSEGV) in the backward pass of a 1x1 stride-2
convolution, which is what mini-Xception's residual shortcuts are.  For a 1x1
kernel, a stride-2 convolution equals taking every second pixel then a stride-1
convolution, so training runs on a copy of the model whose shortcuts are built
that way (``SubsampledPointwiseConv2D``) and the weights are copied back into
the canonical ``build_mini_xception`` model at the end.  This keeps oneDNN on
(measured on 2 cores, batch 32: about 350 images/s against 150-220 with
``TF_ENABLE_ONEDNN_OPTS=0``) and does not depend on the order in which modules
import TensorFlow (that variable only works if set before the first import).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from contract.emotions import EMOTIONS, NUM_EMOTIONS
from models.architecture import build_mini_xception
from runtime.preprocess import FACE_SIZE, normalize_faces, resize_faces

logger = logging.getLogger(__name__)

# A validation set smaller than this is too noisy to steer early stopping
# (one face is 5 % of accuracy); the gate uses the same threshold.
MIN_VALIDATION_SAMPLES = 20
VALIDATION_BATCH_SIZE = 256
# Probabilities are clipped like Keras' cross-entropy does, so a confident
# mistake costs a large but finite loss.
PROBABILITY_EPSILON = 1e-7

# Arriaga's ImageDataGenerator settings (train_emotion_classifier.py).
ROTATION_DEGREES = 10.0
SHIFT_FRACTION = 0.1
ZOOM_FRACTION = 0.1

StoppedReason = str  # "epochs" | "early_stopping" | "time_budget"
ProgressReporter = Callable[[str], None]


def print_progress(line: str) -> None:
    """Default progress reporter: one line on stderr, flushed so it shows in job logs at once."""
    print(line, file=sys.stderr, flush=True)


# -- settings and data ------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSettings:
    """How to train.  Defaults suit fine-tuning the pretrained model on a few thousand faces.

    From scratch, use ``learning_rate=1e-3`` (Adam's default, as Arriaga did),
    ``batch_size=32`` and many more epochs (his checkpoint is epoch 102).
    """

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-4
    patience: int = 3  # epochs without a lower monitored validation loss before stopping
    time_budget_s: float | None = None  # wall-clock limit for the whole train() call
    seed: int = 7
    augment: bool = True
    from_scratch: bool = False
    progress_interval_s: float = 30.0  # a mid-epoch progress line at most this often

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be positive or None, got {self.time_budget_s}")

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (for the model card)."""
        return asdict(self)


LabelledFaces = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TrainingData:
    """Training faces and any number of named validation sets.

    ``x_train`` is uint8 grey faces (N, 64, 64) (other sizes are resized with
    ``resize_faces``); ``y_train`` integer labels in ``EMOTIONS`` order.  Each
    validation set is ``(faces, labels)`` in the same format; the first one
    with at least ``MIN_VALIDATION_SAMPLES`` faces steers early stopping, so
    put the set you care most about first.  Sets may be empty.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    validation: Mapping[str, LabelledFaces] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_labelled_faces("training", self.x_train, self.y_train)
        if len(self.y_train) == 0:
            raise ValueError("the training set is empty")
        for name, (faces, labels) in self.validation.items():
            check_labelled_faces(f"validation set {name!r}", faces, labels)

    def counts(self) -> dict[str, int]:
        """Number of faces per set: ``train`` and ``validation_<name>``."""
        counts = {"train": len(self.y_train)}
        counts.update({f"validation_{name}": len(labels) for name, (_, labels) in self.validation.items()})
        return counts

    def class_counts(self) -> dict[str, int]:
        """Training faces per emotion, every class present (zero when absent)."""
        return class_counts(self.y_train)


def class_counts(labels: np.ndarray) -> dict[str, int]:
    """Faces per emotion name for integer labels in ``EMOTIONS`` order."""
    histogram = np.bincount(np.asarray(labels, dtype=np.int64), minlength=NUM_EMOTIONS)
    return {emotion: int(count) for emotion, count in zip(EMOTIONS, histogram)}


def check_labelled_faces(what: str, faces: np.ndarray, labels: np.ndarray) -> None:
    """Raise ValueError unless ``faces`` and ``labels`` form a usable labelled set."""
    faces = np.asarray(faces)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(faces) != len(labels):
        raise ValueError(f"{what}: {len(faces)} faces but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_EMOTIONS):
        raise ValueError(f"{what}: labels must be in [0, {NUM_EMOTIONS - 1}], got {labels.min()}..{labels.max()}")
    _check_face_format(what, faces)


def _check_face_format(what: str, faces: np.ndarray) -> None:
    normalized_shape = (FACE_SIZE, FACE_SIZE, 1)
    if faces.dtype == np.uint8 and faces.ndim == 3:
        return
    if faces.dtype == np.float32 and faces.shape[1:] == normalized_shape:
        return
    raise ValueError(
        f"{what}: faces must be uint8 grey crops (N, H, W) or normalised float32 (N, 64, 64, 1), "
        f"got {faces.dtype} {faces.shape}"
    )


def model_inputs(faces: np.ndarray) -> np.ndarray:
    """The model's float32 (N, 64, 64, 1) input in [-1, 1] for uint8 grey faces.

    uint8 (N, H, W) faces are resized (if not 64x64) and normalised with the
    edge's own functions; an already-normalised float32 batch is returned as is.
    """
    faces = np.asarray(faces)
    _check_face_format("faces", faces)
    if faces.dtype == np.float32:
        return faces
    if faces.shape[1:] != (FACE_SIZE, FACE_SIZE):
        faces = resize_faces(faces)
    return normalize_faces(faces)


# -- the result -------------------------------------------------------------------------------


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
    trainable = training_graph(canonical)
    _compile(trainable, settings.learning_rate)

    dataset = training_dataset(data.x_train, data.y_train, settings.batch_size, settings.seed, settings.augment)
    validation_sets = _validation_inputs(data)
    monitored_set = choose_monitored_set(validation_sets)
    report(_start_line(data, settings, start_from, monitored_set))
    callbacks = _TrainingCallbacks.create(settings, len(data.y_train), validation_sets, monitored_set, started, report)
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


def _validation_inputs(data: TrainingData) -> dict[str, LabelledFaces]:
    """Every validation set as model inputs and int64 labels, prepared once for all epochs."""
    return {
        name: (model_inputs(faces), np.asarray(labels, np.int64)) for name, (faces, labels) in data.validation.items()
    }


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


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
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
    time_budget: _TimeBudget
    progress: _ProgressLog

    @classmethod
    def create(
        cls,
        settings: TrainingSettings,
        train_count: int,
        validation_sets: Mapping[str, LabelledFaces],
        monitored_set: str | None,
        started: float,
        report: ProgressReporter,
    ) -> _TrainingCallbacks:
        throughput = _ThroughputMeter(settings.batch_size, train_count)
        steps_per_epoch = math.ceil(train_count / settings.batch_size)
        return cls(
            throughput=throughput,
            validation=_ValidationEvaluator(validation_sets, monitored_set),
            early_stopping=_EarlyStoppingWithBestWeights(settings.patience, settings.epochs),
            time_budget=_TimeBudget(settings.time_budget_s, started, settings.epochs),
            progress=_ProgressLog(report, settings.epochs, steps_per_epoch, settings.progress_interval_s, throughput),
        )

    def as_list(self) -> list[keras.callbacks.Callback]:
        """In the order Keras must call them: each epoch-end step reads what the previous ones logged."""
        return [self.throughput, self.validation, self.early_stopping, self.time_budget, self.progress]

    def stopped_reason(self) -> StoppedReason:
        if self.time_budget.triggered:
            return "time_budget"
        if self.early_stopping.stopped:
            return "early_stopping"
        return "epochs"

    def best_epoch(self) -> int | None:
        """1-based epoch whose weights the model ends with; None without a validation loss."""
        best = self.early_stopping.best_epoch
        return None if best is None else best + 1


# -- the training graph (oneDNN workaround) ---------------------------------------------------


class SubsampledPointwiseConv2D(keras.layers.Conv2D):
    """A 1x1 convolution with stride s computed as "every s-th pixel, then a stride-1 1x1 convolution".

    Numerically the same as ``Conv2D(kernel_size=1, strides=s)`` with "same" or
    "valid" padding (a 1x1 kernel never needs padding), with the same weights,
    but its gradient avoids the crashing oneDNN kernel (see the module docstring).
    """

    def __init__(self, subsample: int, **conv_config: Any) -> None:
        super().__init__(**{**conv_config, "strides": (1, 1), "padding": "valid"})
        self.subsample = subsample

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return super().call(inputs[:, :: self.subsample, :: self.subsample, :])

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch, height, width, channels = input_shape
        subsampled = (batch, _ceil_divide(height, self.subsample), _ceil_divide(width, self.subsample), channels)
        return super().compute_output_shape(subsampled)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "subsample": self.subsample}


def _ceil_divide(size: int | None, divisor: int) -> int | None:
    return None if size is None else -(-size // divisor)


def _training_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A fresh copy of ``layer``; strided 1x1 convolutions become ``SubsampledPointwiseConv2D``."""
    config = layer.get_config()
    if type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) != (1, 1):
        row_stride, column_stride = layer.strides
        if row_stride != column_stride or tuple(layer.dilation_rate) != (1, 1):
            return layer.__class__.from_config(config)  # not a shape the subsampling covers; keep as is
        conv_config = {key: value for key, value in config.items() if key != "strides"}
        return SubsampledPointwiseConv2D(row_stride, **conv_config)
    return layer.__class__.from_config(config)


def training_graph(model: keras.Model) -> keras.Model:
    """A copy of ``model`` that trains without the crashing oneDNN kernel, with the same weights."""
    trainable = keras.models.clone_model(model, clone_function=_training_layer)
    copy_weights(model, trainable)
    return trainable


def copy_weights(source: keras.Model, destination: keras.Model) -> None:
    """Copy every layer's weights by layer name (never by position), including batch-norm statistics."""
    for layer in destination.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


# -- the input pipeline -----------------------------------------------------------------------


def training_dataset(
    faces: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, augment: bool
) -> tf.data.Dataset:
    """Shuffled (and optionally augmented) batches of normalised faces and int64 labels, one epoch per iteration.

    Shuffling indices rather than images keeps one copy of the faces in
    memory; the order and the augmentation change every epoch, deterministically
    for a given seed.
    """
    inputs = tf.constant(model_inputs(faces))
    targets = tf.constant(np.asarray(labels, dtype=np.int64))
    count = len(labels)
    indices = tf.data.Dataset.range(count).shuffle(count, seed=seed, reshuffle_each_iteration=True)
    batches = indices.batch(batch_size).map(
        lambda batch_indices: (tf.gather(inputs, batch_indices), tf.gather(targets, batch_indices)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if augment:
        # One 2-integer stateless seed per batch, different every epoch: the
        # draws do not depend on which parallel worker runs which batch.
        batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        batches = tf.data.Dataset.zip((batches, batch_seeds)).map(
            lambda batch, batch_seed: (augment_faces(batch[0], batch_seed), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return batches.prefetch(tf.data.AUTOTUNE)


def augment_faces(faces: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Randomly flip, rotate, shift and zoom a batch of faces (N, H, W, 1) with one affine warp each.

    The ranges are Arriaga's: rotation +-10 degrees, shift +-10 % of the side,
    zoom factors in [0.9, 1.1] drawn independently for x and y, horizontal flip
    with probability 1/2; bilinear interpolation, borders filled with the
    nearest pixel.  ``seed`` is a (2,) integer tensor; equal seeds give equal warps.
    """
    shape = tf.shape(faces)
    count, height, width = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)

    def uniform(index: int, low: float, high: float) -> tf.Tensor:
        return tf.random.stateless_uniform([count], seed=seeds[index], minval=low, maxval=high)

    angle = uniform(0, -ROTATION_DEGREES, ROTATION_DEGREES) * (math.pi / 180.0)
    zoom_x = uniform(1, 1.0 - ZOOM_FRACTION, 1.0 + ZOOM_FRACTION)
    zoom_y = uniform(2, 1.0 - ZOOM_FRACTION, 1.0 + ZOOM_FRACTION)
    shift_x = uniform(3, -SHIFT_FRACTION, SHIFT_FRACTION) * width
    shift_y = uniform(4, -SHIFT_FRACTION, SHIFT_FRACTION) * height
    flip = tf.where(uniform(5, 0.0, 1.0) < 0.5, -1.0, 1.0)
    transforms = _output_to_input_transforms(angle, zoom_x, zoom_y, shift_x, shift_y, flip, height, width)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=faces,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )


def _output_to_input_transforms(
    angle: tf.Tensor,
    zoom_x: tf.Tensor,
    zoom_y: tf.Tensor,
    shift_x: tf.Tensor,
    shift_y: tf.Tensor,
    flip: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
) -> tf.Tensor:
    """Rows [a0, a1, a2, b0, b1, b2, 0, 0] mapping each output pixel (x, y) to the input pixel it samples.

    input = centre + R(angle) . diag(zoom_x, zoom_y) . diag(flip, 1) . (output - centre) + shift,
    with the centre at ((W - 1) / 2, (H - 1) / 2) so that a flip maps pixel
    columns exactly onto each other.
    """
    cosine, sine = tf.cos(angle), tf.sin(angle)
    a0, a1 = cosine * zoom_x * flip, -sine * zoom_y
    b0, b1 = sine * zoom_x * flip, cosine * zoom_y
    centre_x, centre_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a2 = centre_x - (a0 * centre_x + a1 * centre_y) + shift_x
    b2 = centre_y - (b0 * centre_x + b1 * centre_y) + shift_y
    zeros = tf.zeros_like(angle)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


# -- evaluation during training ---------------------------------------------------------------


def loss_and_accuracy(model: keras.Model, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy (without the L2 penalty) and top-1 accuracy of ``model`` on a labelled set."""
    probabilities = model.predict(inputs, batch_size=VALIDATION_BATCH_SIZE, verbose=0)
    true_class_probability = np.clip(probabilities[np.arange(len(labels)), labels], PROBABILITY_EPSILON, 1.0)
    loss = float(np.mean(-np.log(true_class_probability)))
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == labels))
    return loss, accuracy


# -- callbacks --------------------------------------------------------------------------------


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

    def __init__(self, validation_sets: Mapping[str, LabelledFaces], monitored_set: str | None) -> None:
        super().__init__()
        self.validation_sets = {name: pair for name, pair in validation_sets.items() if len(pair[1]) > 0}
        self.monitored_set = monitored_set

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            return
        for name, (inputs, labels) in self.validation_sets.items():
            loss, accuracy = loss_and_accuracy(self.model, inputs, labels)
            logs[f"val_{name}_loss"] = loss
            logs[f"val_{name}_accuracy"] = accuracy
            if name == self.monitored_set:
                logs["val_loss"] = loss
                logs["val_accuracy"] = accuracy


class _EarlyStoppingWithBestWeights(keras.callbacks.Callback):
    """Stop after ``patience`` epochs without a lower ``val_loss``; end with the best epoch's weights.

    Unlike ``keras.callbacks.EarlyStopping`` it also restores the best weights
    when training ends for another reason (epochs exhausted, time budget), so
    the returned model is always the best one seen, and it says whether it
    actually cut training short.
    """

    def __init__(self, patience: int, total_epochs: int) -> None:
        super().__init__()
        self.patience = patience
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


def _start_line(
    data: TrainingData, settings: TrainingSettings, start_from: Path | None, monitored_set: str | None
) -> str:
    origin = "from scratch" if settings.from_scratch else f"fine-tuning {start_from}"
    sets = ", ".join(f"{name} {len(labels)}" for name, (_, labels) in data.validation.items()) or "none"
    budget = f"{settings.time_budget_s:.0f} s" if settings.time_budget_s is not None else "none"
    return (
        f"training {origin}: {len(data.y_train)} faces, up to {settings.epochs} epochs of batch {settings.batch_size}, "
        f"lr {settings.learning_rate:g}, augment {settings.augment}, time budget {budget}; "
        f"validation: {sets}; early stopping on {monitored_set or 'nothing'} (patience {settings.patience})"
    )


def _end_line(run: TrainingRun) -> str:
    best = f", best epoch {run.best_epoch} on {run.monitored_set}" if run.best_epoch is not None else ""
    return (
        f"training stopped ({run.stopped_reason}) after {run.epochs_run} epoch(s), {run.seconds:.1f} s, "
        f"{run.images_per_second:.0f} img/s{best}"
    )
