"""Training data and settings: labelled faces, their checks, and the model's inputs. No TensorFlow.

The gate and the model card use these too, so this module imports only
numpy and :mod:`runtime.preprocess` (the edge's own preprocessing): training
and inference see the same pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.emotions import EMOTIONS, NUM_EMOTIONS
from runtime.preprocess import FACE_SIZE, normalize_faces, resize_faces

SCHEDULES = ("constant", "cosine")
EARLY_STOPPING_ON = ("first", "mean")

# A validation set smaller than this is too noisy to steer early stopping
# (one face is 5 % of accuracy); the gate uses the same threshold.
MIN_VALIDATION_SAMPLES = 20


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
    # What the literature on small FER models says helps (all off by default: fine-tuning on a
    # few thousand collected faces wants the plain recipe; a base-model run turns them on).
    label_smoothing: float = 0.0  # targets (1 - e) one-hot + e / 7
    mixup_alpha: float = 0.0  # > 0: each batch mixed with a shuffled copy, weight ~ Beta(alpha, alpha)
    random_erasing: float = 0.0  # probability that a face gets one random grey rectangle
    schedule: str = "constant"  # "constant" or "cosine" (decay to 0 over all epochs, after warm-up)
    warmup_epochs: int = 0  # linear warm-up of the learning rate (cosine schedule only)
    target_accuracy: float | None = None  # stop once the monitored validation set reaches it
    checkpoint_dir: Path | None = None  # resume from here after an interruption (epoch granularity)
    # Fine-tuning without forgetting (see the README's learning-loop section for what each gave).
    # distillation > 0: the targets of the faces ``TrainingData.distill`` marks (the base set's) are
    # (1 - d) * their label + d * the starting model's probabilities (Learning without Forgetting,
    # Li & Hoiem 2017, with the old model's answers recorded once before training).
    distillation: float = 0.0
    freeze_batch_norm: bool = False  # keep the starting model's batch-norm statistics and scales
    # "first": early stopping watches the first big-enough validation set; "mean": the mean loss of
    # every validation set with at least MIN_VALIDATION_SAMPLES faces (new faces and base faces alike).
    early_stopping_on: str = "first"
    # Run every epoch and keep the last weights: for a fixed schedule, or when the validation set is not
    # independent of the starting model (FER2013 Training, which the shipped model was trained on).
    keep_last: bool = False

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
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0, got {self.mixup_alpha}")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ValueError(f"random_erasing must be a probability, got {self.random_erasing}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.target_accuracy is not None and not 0.0 < self.target_accuracy <= 1.0:
            raise ValueError(f"target_accuracy must be in (0, 1], got {self.target_accuracy}")
        if not 0.0 <= self.distillation < 1.0:
            raise ValueError(f"distillation must be in [0, 1), got {self.distillation}")
        if self.early_stopping_on not in EARLY_STOPPING_ON:
            raise ValueError(f"early_stopping_on must be one of {', '.join(EARLY_STOPPING_ON)}, got {self.early_stopping_on!r}")

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (for the model card)."""
        settings = asdict(self)
        settings["checkpoint_dir"] = None if self.checkpoint_dir is None else str(self.checkpoint_dir)
        return settings


LabelledFaces = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TrainingData:
    """Training faces and any number of named validation sets.

    ``x_train`` is uint8 grey faces (N, 64, 64) (other sizes are resized with
    ``resize_faces``); ``y_train`` integer labels in ``EMOTIONS`` order.  Each
    validation set is ``(faces, labels)`` in the same format; the first one
    with at least ``MIN_VALIDATION_SAMPLES`` faces steers early stopping, so
    put the set you care most about first.  Sets may be empty.  ``distill``: a boolean mask of
    the training faces whose targets ``TrainingSettings.distillation`` blends with the starting
    model's answers (None: every face).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    validation: Mapping[str, LabelledFaces] = field(default_factory=dict)
    distill: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_labelled_faces("training", self.x_train, self.y_train)
        if len(self.y_train) == 0:
            raise ValueError("the training set is empty")
        if self.distill is not None and (np.asarray(self.distill).dtype != bool or np.asarray(self.distill).shape != (len(self.y_train),)):
            raise ValueError(f"distill must be a boolean mask of the {len(self.y_train)} training faces")
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


def validation_inputs(validation: Mapping[str, LabelledFaces]) -> dict[str, LabelledFaces]:
    """Every named set of labelled faces as model inputs and int64 labels, prepared once."""
    return {name: (model_inputs(faces), np.asarray(labels, np.int64)) for name, (faces, labels) in validation.items()}
