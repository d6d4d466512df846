"""Build a training set from what the cloud collected: stored face crops and their labels.

* **Labels:** a person's label wins; with ``min_confidence`` set, the model's
  own label is used for faces nobody labelled when it was that sure.
* **Near-duplicates:** one face tracked over many frames gives dozens of
  almost identical crops. Within a track, a crop is kept only when it differs
  visibly from the last kept one (or its label changes).
* **Split by device and time:** faces are grouped into track sessions
  (device, track id, no gap longer than ``session_gap_s``); for each device
  the latest sessions go to validation, so no track is in both sets and the
  validation set is "the future" of the training set.

TensorFlow-free: the job imports TensorFlow only to train.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from cloud.store import FaceRow, TrainingStore
from contract.emotions import EMOTIONS

LABEL_INDEX = {name: index for index, name in enumerate(EMOTIONS)}


@dataclass(frozen=True)
class DatasetSettings:
    min_confidence: float | None = None     # None: human labels only
    duplicate_threshold: float = 6.0       # mean absolute grey difference that makes a crop "new"
    session_gap_s: float = 30.0
    validation_fraction: float = 0.2


@dataclass
class CollectedDataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)

    def class_balance(self) -> dict[str, int]:
        labels = np.concatenate([self.y_train, self.y_validation])
        histogram = Counter(int(label) for label in labels)
        return {name: histogram.get(index, 0) for index, name in enumerate(EMOTIONS)}


@dataclass
class Sample:
    face: FaceRow
    label: str
    pixels: np.ndarray
    human: bool


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


def split_by_device_and_time(sessions: list[list[Sample]], validation_fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Per device, the latest sessions (about ``validation_fraction`` of its faces) become validation."""
    by_device: dict[str, list[list[Sample]]] = {}
    for session in sessions:
        by_device.setdefault(session[0].face.device_id, []).append(session)
    train, validation = [], []
    for device_sessions in by_device.values():
        device_sessions.sort(key=lambda session: session[0].face.captured_at)
        wanted = validation_fraction * sum(len(session) for session in device_sessions)
        taken = 0
        while len(device_sessions) > 1 and taken < wanted:
            session = device_sessions.pop()
            validation.extend(session)
            taken += len(session)
        for session in device_sessions:
            train.extend(session)
    return train, validation


def _arrays(samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    if not samples:
        return np.zeros((0, 64, 64), np.uint8), np.zeros((0,), np.int64)
    return np.stack([sample.pixels for sample in samples]), np.array([LABEL_INDEX[sample.label] for sample in samples], np.int64)


def build_dataset(store: TrainingStore, settings: DatasetSettings = DatasetSettings()) -> CollectedDataset:
    samples = load_samples(store, settings)
    sessions = [drop_near_duplicates(session, settings.duplicate_threshold) for session in track_sessions(samples, settings.session_gap_s)] if samples else []
    kept = [sample for session in sessions for sample in session]
    train, validation = split_by_device_and_time(sessions, settings.validation_fraction)
    x_train, y_train = _arrays(train)
    x_validation, y_validation = _arrays(validation)
    counts = {
        "faces_usable": len(samples),
        "human_labels": sum(sample.human for sample in samples),
        "model_labels": sum(not sample.human for sample in samples),
        "near_duplicates_dropped": len(samples) - len(kept),
        "train": len(train),
        "validation": len(validation),
        "devices": len({sample.face.device_id for sample in samples}),
        "track_sessions": len(sessions),
    }
    return CollectedDataset(x_train, y_train, x_validation, y_validation, counts)
