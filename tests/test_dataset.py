"""Building the retraining sets (real SQLite): labels, near-duplicates, and three disjoint parts
(training, selection, gate) for the collected faces, the imported ones and the FER2013 base set."""

from __future__ import annotations

import hashlib
import time

import cv2
import numpy as np
import pytest

from cloud.store import ImportedFace, NewResult, Store
from contract.emotions import EMOTIONS
from models.dataset import DatasetSettings, base_rows, build_dataset, load_rows, part_by_hash, split_base_set
from tests import factories
from tests.conftest import SHARED

FER2013 = SHARED / "data" / "fer2013_trainval.npz"


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


def import_face(store: Store, seed: int, label: str = "sad") -> int:
    pixels = np.random.default_rng(10_000 + seed).integers(0, 255, (64, 64), np.uint8)
    face = ImportedFace(
        source="test-set", file_name=f"{label}/{seed}.png", label=label, labelled_by="import", crop_png=cv2.imencode(".png", pixels)[1].tobytes(),
        content_sha256=hashlib.sha256(pixels.tobytes()).hexdigest(), probabilities=(0.1, 0.1, 0.1, 0.4, 0.1, 0.1, 0.1),
        model_name="mini_xception_fer2013", model_version="1.0.0", box=(0, 0, 64, 64), width=64, height=64, imported_at=time.time(),
    )
    face_id, stored = store.add_imported_face(face)
    assert stored
    return face_id


def parts_of(dataset) -> dict[str, set[int]]:
    return {"train": set(dataset.train.face_ids), "selection": set(dataset.selection.face_ids), "gate": set(dataset.gate.face_ids)}


def test_human_labels_near_duplicates_and_the_time_split(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'cloud.db'}")
    ids = []
    # cam-a: track 1 early (10 varied crops), track 2 later (5), track 4 latest (4)
    ids += [store_face(store, "cam-a", 1, offset, seed=offset) for offset in range(10)]
    ids += [store_face(store, "cam-a", 2, 1000 + offset, seed=100 + offset) for offset in range(5)]
    latest = [store_face(store, "cam-a", 4, 3000 + offset, seed=400 + offset) for offset in range(4)]
    ids += latest
    # cam-b: one track of 6 identical crops (near-duplicates): one session, so all of it trains
    ids += [store_face(store, "cam-b", 1, offset, seed=200, same_picture=True) for offset in range(6)]
    for face_id in ids:
        store.add_label(face_id, "happy", "alice")
    unlabelled = store_face(store, "cam-a", 3, 2000, seed=300)

    dataset = build_dataset(store, DatasetSettings(selection_fraction=0.2, gate_fraction=0.2))

    assert dataset.counts["human_labels"] == len(ids)  # the unlabelled face is not used
    assert dataset.counts["near_duplicates_dropped"] == 5  # cam-b's copies collapse to one
    parts = parts_of(dataset)
    assert parts["gate"] == set(latest)  # the latest session of cam-a: "the future"
    assert len(parts["selection"]) == 5  # the session before it; no track is split across parts
    assert len(parts["train"]) == 10 + 1
    assert set(dataset.train.y.tolist()) == {EMOTIONS.index("happy")}
    assert dataset.train.x.shape[1:] == (64, 64) and dataset.train.x.dtype == np.uint8
    assert dataset.class_balance()["happy"] == len(ids) - 5

    confident = build_dataset(store, DatasetSettings(min_confidence=0.01, selection_fraction=0.2, gate_fraction=0.2))
    assert confident.counts["model_labels"] == 1  # the unlabelled face, by the model's own label
    assert unlabelled not in set(confident.gate.face_ids) | set(confident.selection.face_ids)
    assert store.face(unlabelled).human_label is None
    store.close()


def test_selection_and_gate_are_disjoint_from_training_and_each_other_by_construction(tmp_path):
    """Many devices, tracks, gaps, model labels and imported faces: every face lands in exactly one part,
    every track session in one part, and selection and gate hold only people's labels."""
    store = Store(f"sqlite:///{tmp_path / 'cloud.db'}")
    generator = np.random.default_rng(5)
    session_of: dict[int, tuple[str, int, int]] = {}
    for device in ("cam-a", "cam-b", "cam-c"):
        clock = 0.0
        for track in range(1, 9):
            for session in range(2):
                clock += 100 + generator.integers(0, 50)  # a gap longer than session_gap_s: a new session
                for frame in range(int(generator.integers(1, 6))):
                    face_id = store_face(store, device, track, clock + frame, seed=int(generator.integers(0, 1 << 30)))
                    session_of[face_id] = (device, track, session)
                    if generator.random() < 0.8:
                        store.add_label(face_id, EMOTIONS[int(generator.integers(0, 7))], "alice")
    imported = {import_face(store, seed) for seed in range(60)}
    settings = DatasetSettings(min_confidence=0.0001, selection_fraction=0.15, gate_fraction=0.25)

    dataset = build_dataset(store, settings)

    parts = parts_of(dataset)
    assert not parts["train"] & parts["selection"] and not parts["train"] & parts["gate"] and not parts["selection"] & parts["gate"]
    assert parts["selection"] and parts["gate"] and imported & parts["gate"] and imported & parts["train"]
    sessions_in = {name: {session_of[face_id] for face_id in ids if face_id in session_of} for name, ids in parts.items()}
    assert not sessions_in["train"] & sessions_in["gate"] and not sessions_in["selection"] & sessions_in["gate"]
    assert not sessions_in["train"] & sessions_in["selection"]
    held_out = parts["selection"] | parts["gate"]
    assert all(store.face(face_id).human_label for face_id in held_out)
    assert dataset.counts["imported"] == 60
    # Stable from one run to the next, and an imported face's part follows its content alone.
    again = build_dataset(store, settings)
    assert parts_of(again) == parts
    for face_id in imported:
        face = store.face(face_id)
        expected = part_by_hash(face.content_sha256, 0.15, 0.25)
        assert face_id in parts[expected]
    store.close()


def test_the_fractions_must_leave_faces_to_train_on():
    with pytest.raises(ValueError, match="leave something to train on"):
        DatasetSettings(selection_fraction=0.5, gate_fraction=0.5)


def test_the_base_set_selection_and_gate_rows_are_disjoint():
    train, selection, gate = base_rows(28_709, 3_589, train_samples=5_000, selection_samples=1_000, gate_samples=None)

    assert len(train) == 5_000 and len(set(train.tolist())) == 5_000
    assert len(selection) == 1_000 and len(gate) == 2_589
    assert not set(selection.tolist()) & set(gate.tolist())
    assert set(selection.tolist()) | set(gate.tolist()) == set(range(3_589))
    # The same rows on every run: a later candidate is never gated on faces an earlier one was selected on.
    assert all(np.array_equal(first, second) for first, second in zip((train, selection, gate), base_rows(28_709, 3_589, 5_000, 1_000, None)))
    _, _, smaller_gate = base_rows(28_709, 3_589, 5_000, 1_000, 500)
    assert np.array_equal(smaller_gate, gate[:500])
    with pytest.raises(ValueError, match="validation split has 3589"):
        base_rows(28_709, 3_589, 5_000, 3_000, 1_000)


def test_split_base_set_reads_the_npz():
    if not FER2013.exists():
        pytest.skip(f"{FER2013} not found")
    split = split_base_set(FER2013, train_samples=50, selection_samples=40, gate_samples=60)

    assert split.train[0].shape == (50, 64, 64) and split.selection[0].shape == (40, 64, 64) and split.gate[0].shape == (60, 64, 64)
    assert split.gate[1].dtype == np.int64
    assert not set(split.selection_rows.tolist()) & set(split.gate_rows.tolist())


def test_the_base_gate_can_exclude_rows_and_selection_stays_the_same(tmp_path):
    _, selection, gate = base_rows(28_709, 3_589, 5_000, 1_000, None)
    excluded = gate[::2]
    _, same_selection, smaller_gate = base_rows(28_709, 3_589, 5_000, 1_000, None, gate_exclude=excluded)

    assert np.array_equal(same_selection, selection)
    assert np.array_equal(smaller_gate, gate[1::2]) and not set(smaller_gate.tolist()) & set(excluded.tolist())
    np.save(tmp_path / "rows.npy", excluded)
    (tmp_path / "rows.txt").write_text("\n".join(str(row) for row in excluded))
    assert np.array_equal(load_rows(tmp_path / "rows.npy"), excluded) and np.array_equal(load_rows(tmp_path / "rows.txt"), excluded)
    np.save(tmp_path / "bad.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="integer row numbers"):
        load_rows(tmp_path / "bad.npy")
