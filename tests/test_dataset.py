"""Building the retraining set from the cloud store (real SQLite): labels, near-duplicates, device/time split."""

from __future__ import annotations

import cv2
import numpy as np

from cloud.store import NewResult, Store
from contract.emotions import EMOTIONS
from models.dataset import DatasetSettings, build_dataset
from tests import factories


def crop(seed: int, noise: bool = True) -> bytes:
    pixels = np.full((64, 64), 100, np.uint8) if not noise else np.random.default_rng(seed).integers(0, 255, (64, 64), np.uint8)
    ok, png = cv2.imencode(".png", pixels)
    return png.tobytes()


def store_face(store: Store, device: str, track: int, captured_offset: float, seed: int, same_picture: bool = False) -> int:
    result = factories.result(device_id=device, faces=[factories.face(track, seed=seed)])
    with store.transaction():
        store.add_results([NewResult(result, [crop(seed, noise=not same_picture)], "{}")], 0.0)
    face_id = store.db.scalar("SELECT MAX(id) FROM faces")
    store.db.execute("UPDATE faces SET captured_at = ? WHERE id = ?", (1_000_000 + captured_offset, face_id))
    return face_id


def test_human_labels_near_duplicates_and_split(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'cloud.db'}")
    ids = []
    # cam-a: track 1 early (10 varied crops), track 2 much later (5 varied crops)
    ids += [store_face(store, "cam-a", 1, offset, seed=offset) for offset in range(10)]
    ids += [store_face(store, "cam-a", 2, 1000 + offset, seed=100 + offset) for offset in range(5)]
    # cam-b: one track of 6 identical crops (near-duplicates)
    ids += [store_face(store, "cam-b", 1, offset, seed=200, same_picture=True) for offset in range(6)]
    for face_id in ids:
        store.add_label(face_id, "happy", "alice")
    unlabelled = store_face(store, "cam-a", 3, 2000, seed=300)

    dataset = build_dataset(store, DatasetSettings(validation_fraction=0.3))

    assert dataset.counts["human_labels"] == len(ids)  # the unlabelled face is not used
    assert dataset.counts["near_duplicates_dropped"] == 5  # cam-b's copies collapse to one
    assert len(dataset.y_train) + len(dataset.y_validation) == len(ids) - 5
    assert len(dataset.y_validation) == 5  # cam-a's later track; no track is split across the sets
    assert set(dataset.y_train.tolist()) == {EMOTIONS.index("happy")}
    assert dataset.x_train.shape[1:] == (64, 64) and dataset.x_train.dtype == np.uint8
    assert dataset.class_balance()["happy"] == len(ids) - 5

    confident = build_dataset(store, DatasetSettings(min_confidence=0.01))
    assert confident.counts["model_labels"] == 1  # the unlabelled face, by the model's own label
    assert store.face(unlabelled).human_label is None
    store.close()
