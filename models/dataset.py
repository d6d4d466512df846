"""Build the retraining sets from what the cloud holds, and from the base set, in three disjoint parts.

Every face goes to exactly one of three parts:

* **train**: what the model learns from;
* **selection**: what early stopping watches (model selection);
* **gate**: what the promotion gate (:mod:`models.gate`) judges the candidate
  on, never seen by training nor selection.

Collected faces (:func:`build_dataset`):

* **Labels:** a person's label wins; with ``min_confidence`` set, the model's
  own label is used for faces nobody labelled when it was that sure, but only
  for training: selection and gate faces are human-labelled only (a model is
  always "right" on its own labels).
* **Near-duplicates:** one face tracked over many frames gives dozens of
  almost identical crops. Within a track, a crop is kept only when it differs
  visibly from the last kept one (or its label changes).
* **Split by device and time:** faces are grouped into track sessions
  (device, track id, no gap longer than ``session_gap_s``); per device the
  latest sessions go to the gate, the ones before them to selection, the rest
  to training. So no track session is in two parts, and the gate is "the
  future" of what the model learnt from.
* **Imported faces** (``emq-retrain import``: each its own picture, no track,
  no meaningful time) go to a part by their content hash, so the choice is
  random-like, stable from one run to the next, and does not depend on the
  order they were imported in.

The base set (:func:`split_base_set`, FER2013): training faces from its
training split; its validation split (PublicTest) cut by one seeded
permutation into a selection part and a disjoint gate part.

TensorFlow-free: the job imports TensorFlow only to train.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from cloud.store import FaceRow, TrainingStore
from contract.emotions import EMOTIONS
from runtime.preprocess import resize_faces

LABEL_INDEX = {name: index for index, name in enumerate(EMOTIONS)}
Part = Literal["train", "selection", "gate"]
PARTS: tuple[Part, ...] = ("train", "selection", "gate")
BASE_SEED = 0  # one permutation of the base set for every run: its selection and gate parts stay the same


@dataclass(frozen=True)
class DatasetSettings:
    min_confidence: float | None = None     # None: human labels only
    duplicate_threshold: float = 6.0       # mean absolute grey difference that makes a crop "new"
    session_gap_s: float = 30.0
    selection_fraction: float = 0.15       # of each device's faces, for early stopping
    gate_fraction: float = 0.25            # of each device's faces, for the promotion gate

    def __post_init__(self) -> None:
        if self.selection_fraction < 0 or self.gate_fraction < 0 or self.selection_fraction + self.gate_fraction >= 1:
            raise ValueError(
                f"selection_fraction {self.selection_fraction} and gate_fraction {self.gate_fraction} must be "
                "non-negative and leave something to train on"
            )


@dataclass
class LabelledPart:
    """One part of the collected set: faces, labels and the store's face ids."""

    x: np.ndarray  # (N, 64, 64) uint8
    y: np.ndarray  # (N,) int64, EMOTIONS order
    face_ids: list[int]

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class CollectedDataset:
    train: LabelledPart
    selection: LabelledPart
    gate: LabelledPart
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def x_train(self) -> np.ndarray:
        return self.train.x

    @property
    def y_train(self) -> np.ndarray:
        return self.train.y

    def class_balance(self) -> dict[str, int]:
        labels = np.concatenate([self.train.y, self.selection.y, self.gate.y])
        histogram = Counter(int(label) for label in labels)
        return {name: histogram.get(index, 0) for index, name in enumerate(EMOTIONS)}


@dataclass
class Sample:
    face: FaceRow
    label: str
    pixels: np.ndarray
    human: bool

    @property
    def imported(self) -> bool:
        return self.face.source is not None


def chosen_label(face: FaceRow, min_confidence: float | None) -> tuple[str, bool] | None:
    """(label, labelled by a person) or None when the face is not usable."""
    if face.human_label:
        return face.human_label, True
    if min_confidence is not None and face.confidence >= min_confidence:
        return face.label, False
    return None


def decode_crop(png: bytes) -> np.ndarray | None:
    pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    return pixels if pixels is not None and pixels.shape == (64, 64) else None


def load_samples(store: TrainingStore, settings: DatasetSettings) -> list[Sample]:
    samples = []
    for face in store.training_faces(settings.min_confidence):
        choice = chosen_label(face, settings.min_confidence)
        png = store.crop_png(face.id) if choice else None
        pixels = decode_crop(png) if png else None
        if pixels is not None:
            samples.append(Sample(face, choice[0], pixels, choice[1]))
    return samples


def track_sessions(samples: list[Sample], gap_s: float) -> list[list[Sample]]:
    """Group by (device, track) and split a track where it was not seen for ``gap_s``."""
    by_track: dict[tuple[str, int], list[Sample]] = {}
    for sample in sorted(samples, key=lambda item: item.face.captured_at):
        by_track.setdefault((sample.face.device_id, sample.face.track_id), []).append(sample)
    sessions = []
    for track in by_track.values():
        current = [track[0]]
        for previous, sample in zip(track, track[1:]):
            if sample.face.captured_at - previous.face.captured_at > gap_s:
                sessions.append(current)
                current = []
            current.append(sample)
        sessions.append(current)
    return sessions


def drop_near_duplicates(session: list[Sample], threshold: float) -> list[Sample]:
    kept = [session[0]]
    for sample in session[1:]:
        last = kept[-1]
        difference = float(np.mean(np.abs(sample.pixels.astype(np.int16) - last.pixels.astype(np.int16))))
        if difference >= threshold or sample.label != last.label:
            kept.append(sample)
    return kept


def split_sessions_by_device_and_time(
    sessions: list[list[Sample]], selection_fraction: float, gate_fraction: float
) -> dict[Part, list[list[Sample]]]:
    """Per device, the latest sessions (about ``gate_fraction`` of its faces) go to the gate, the sessions
    just before them (about ``selection_fraction``) to selection, the rest (at least one session) to training."""
    by_device: dict[str, list[list[Sample]]] = {}
    for session in sessions:
        by_device.setdefault(session[0].face.device_id, []).append(session)
    parts: dict[Part, list[list[Sample]]] = {part: [] for part in PARTS}
    for device_sessions in by_device.values():
        device_sessions.sort(key=lambda session: session[0].face.captured_at)
        faces = sum(len(session) for session in device_sessions)
        parts["gate"] += _take_latest(device_sessions, gate_fraction * faces)
        parts["selection"] += _take_latest(device_sessions, selection_fraction * faces)
        parts["train"] += device_sessions
    return parts


def _take_latest(sessions: list[list[Sample]], wanted: float) -> list[list[Sample]]:
    """Pop the latest sessions off ``sessions`` until ``wanted`` faces are taken, always leaving one."""
    taken: list[list[Sample]] = []
    count = 0
    while len(sessions) > 1 and count < wanted:
        session = sessions.pop()
        taken.append(session)
        count += len(session)
    return taken


def part_by_hash(content_sha256: str, selection_fraction: float, gate_fraction: float) -> Part:
    """The part of an imported face: a uniform number from its content hash, cut at the two fractions."""
    position = int(content_sha256[:12], 16) / float(16**12)
    if position < gate_fraction:
        return "gate"
    if position < gate_fraction + selection_fraction:
        return "selection"
    return "train"


def split_samples(samples: list[Sample], settings: DatasetSettings) -> tuple[dict[Part, list[Sample]], dict[str, int]]:
    """Every usable sample in exactly one part (and some counts on the way)."""
    collected = [sample for sample in samples if not sample.imported]
    sessions = [drop_near_duplicates(session, settings.duplicate_threshold) for session in track_sessions(collected, settings.session_gap_s)] if collected else []
    by_session = split_sessions_by_device_and_time(sessions, settings.selection_fraction, settings.gate_fraction)
    parts: dict[Part, list[Sample]] = {part: [sample for session in by_session[part] for sample in session] for part in PARTS}
    for sample in samples:
        if sample.imported:
            parts[part_by_hash(sample.face.content_sha256 or "0", settings.selection_fraction, settings.gate_fraction)].append(sample)
    # Selection and gate judge models against people's labels only; model labels may only teach.
    held_out_model_labels = sum(not sample.human for part in ("selection", "gate") for sample in parts[part])
    for part in ("selection", "gate"):
        parts[part] = [sample for sample in parts[part] if sample.human]
    counts = {
        "near_duplicates_dropped": len(collected) - sum(len(session) for session in sessions),
        "track_sessions": len(sessions),
        "model_labels_held_out_dropped": held_out_model_labels,
    }
    return parts, counts


def _part(samples: list[Sample]) -> LabelledPart:
    if not samples:
        return LabelledPart(np.zeros((0, 64, 64), np.uint8), np.zeros((0,), np.int64), [])
    return LabelledPart(
        np.stack([sample.pixels for sample in samples]),
        np.array([LABEL_INDEX[sample.label] for sample in samples], np.int64),
        [sample.face.id for sample in samples],
    )


def build_dataset(store: TrainingStore, settings: DatasetSettings = DatasetSettings()) -> CollectedDataset:
    samples = load_samples(store, settings)
    parts, split_counts = split_samples(samples, settings)
    counts = {
        "faces_usable": len(samples),
        "human_labels": sum(sample.human for sample in samples),
        "model_labels": sum(not sample.human for sample in samples),
        "imported": sum(sample.imported for sample in samples),
        **split_counts,
        "train": len(parts["train"]),
        "selection": len(parts["selection"]),
        "gate": len(parts["gate"]),
        "devices": len({sample.face.device_id for sample in samples if not sample.imported}),
    }
    return CollectedDataset(_part(parts["train"]), _part(parts["selection"]), _part(parts["gate"]), counts)


# -- the base set (FER2013) ------------------------------------------------------------------------


@dataclass
class BaseSplit:
    """The base set's three parts (faces resized to 64x64) and which rows of the npz each took."""

    train: tuple[np.ndarray, np.ndarray]
    selection: tuple[np.ndarray, np.ndarray]
    gate: tuple[np.ndarray, np.ndarray]
    train_rows: np.ndarray  # rows of x_train
    selection_rows: np.ndarray  # rows of x_val
    gate_rows: np.ndarray  # rows of x_val, none of them in selection_rows


def base_rows(train_count: int, validation_count: int, train_samples: int, selection_samples: int,
              gate_samples: int | None, seed: int = BASE_SEED,
              gate_exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows for training (of x_train), selection and the gate (of x_val): one permutation of x_val, cut in two.

    ``gate_samples`` None takes every x_val row that selection does not. ``gate_exclude``: x_val rows the
    gate must not use (e.g. the originals of faces a benchmark trains on); selection is cut as without it.
    """
    if selection_samples + (gate_samples or 0) > validation_count:
        raise ValueError(
            f"base set: {selection_samples} selection + {gate_samples} gate faces asked for, "
            f"but its validation split has {validation_count}"
        )
    generator = np.random.default_rng(seed)
    train = generator.permutation(train_count)[:train_samples]
    validation = generator.permutation(validation_count)
    selection = validation[:selection_samples]
    gate = validation[selection_samples:]
    if gate_exclude is not None:
        gate = gate[~np.isin(gate, gate_exclude)]
    if gate_samples is not None:
        gate = gate[:gate_samples]
    return train, selection, gate


def load_rows(path: Path) -> np.ndarray:
    """Row numbers from a ``.npy`` file or a text file with one number per line."""
    rows = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, dtype=np.int64, ndmin=1)
    rows = np.asarray(rows)
    if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"{path}: expected a list of integer row numbers, got {rows.dtype} {rows.shape}")
    return rows.astype(np.int64)


def split_base_set(npz: Path, train_samples: int, selection_samples: int, gate_samples: int | None,
                   gate_exclude: np.ndarray | None = None) -> BaseSplit:
    """Seeded samples of the base npz (``x_train/y_train/x_val/y_val``) for training, selection and the gate.

    ``gate_exclude``: x_val rows kept out of the gate part (see :func:`base_rows`).
    """
    with np.load(npz) as arrays:
        x_train, y_train, x_val, y_val = (arrays[key] for key in ("x_train", "y_train", "x_val", "y_val"))
    train, selection, gate = base_rows(len(y_train), len(y_val), train_samples, selection_samples, gate_samples, gate_exclude=gate_exclude)

    def faces(x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return resize_faces(x[rows]), y[rows].astype(np.int64)

    return BaseSplit(faces(x_train, y_train, train), faces(x_val, y_val, selection), faces(x_val, y_val, gate), train, selection, gate)
