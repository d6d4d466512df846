"""`emq-retrain import`: labelled pictures from outside become human-labelled crops in the cloud store,
cut like the edge cuts faces, once each; bad files are reported and skipped, never fatal."""

from __future__ import annotations

import os
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from cloud.store import IMPORT_DEVICE_ID, DashboardStore, Store
from edge.perception.classifier import FaceClassifier
from edge.perception.detector import FaceDetector
from edge.perception.settings import ClassificationSettings, DetectionSettings
from models.dataset import decode_crop
from models.face_import import ImportSettings, is_face_crop
from runtime.registry import ModelRegistry, RegistryError
from tests.conftest import console_script, media_file


@pytest.fixture(scope="module")
def model_store():
    registry = ModelRegistry()
    try:
        registry.verify(registry.current())
    except (RegistryError, AttributeError) as error:
        pytest.skip(f"no verified current model in {registry.store} ({error}): run emq-model import-pretrained")
    return registry.store


@pytest.fixture
def database(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    Store(url).close()  # the ingest's first start creates the schema
    return url


def run_import(database: str, model_store, *arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EMQ_RETRAIN__DATABASE_URL=database, EMQ_RETRAIN__MODEL_STORE=str(model_store))
    return subprocess.run([console_script("emq-retrain"), "import", *arguments], env=env, capture_output=True, text=True, timeout=120)


def edge_crop(picture) -> np.ndarray:
    """The 64x64 crop the edge agent would cut of the picture's largest face."""
    gray = cv2.cvtColor(cv2.imread(str(picture)), cv2.COLOR_BGR2GRAY)
    boxes = FaceDetector(DetectionSettings()).detect_full(gray)
    largest = max(boxes, key=lambda box: box[2] * box[3])
    return FaceClassifier(lambda batch: batch, ClassificationSettings()).crops(gray, [largest])[0]


def labelled_folder(root) -> dict[str, str]:
    """Good, duplicate, corrupt, empty, non-face, unknown-label and stray files; returns the expectation per file."""
    justin, group, no_faces = media_file("justin.jpg"), media_file("group_photo.jpg"), media_file("no-faces.jpg")
    for emotion in ("happy", "neutral", "sad", "surprise", "angry", "bored"):
        (root / emotion).mkdir(parents=True)
    shutil.copy(justin, root / "happy" / "justin.jpg")
    cv2.imwrite(str(root / "happy" / "justin.png"), cv2.imread(str(justin)))  # same pixels, another format
    shutil.copy(group, root / "neutral" / "team.jpg")
    cv2.imwrite(str(root / "sad" / "crop.png"), edge_crop(justin)[4:52, 6:54])  # a 48x48 crop: taken as it is
    shutil.copy(no_faces, root / "surprise" / "landscape.jpg")
    (root / "angry" / "corrupt.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    (root / "angry" / "empty.png").write_bytes(b"")
    (root / "angry" / "notes.txt").write_text("not a picture")
    shutil.copy(justin, root / "bored" / "justin.jpg")
    shutil.copy(justin, root / "stray.jpg")
    return {
        "happy/justin.jpg": "stored", "happy/justin.png": "duplicate", "neutral/team.jpg": "stored",
        "sad/crop.png": "stored", "surprise/landscape.jpg": "no face", "angry/corrupt.jpg": "OpenCV can decode",
        "angry/empty.png": "OpenCV can decode", "angry/notes.txt": "OpenCV can decode", "bored/justin.jpg": "unknown label",
        "stray.jpg": "not in a sub-folder",
    }


def test_a_folder_of_good_duplicate_corrupt_and_faceless_pictures(tmp_path, database, model_store):
    expected = labelled_folder(tmp_path / "faces")

    run = run_import(database, model_store, str(tmp_path / "faces"), "--source", "team-photos", "--labelled-by", "bob")

    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "3 faces stored (happy 1, neutral 1, sad 1), 1 duplicates of stored faces, 6 files skipped" in run.stdout
    for name, outcome in expected.items():
        if outcome == "duplicate":
            assert f"duplicate {name}: already stored as face" in run.stdout
        elif outcome != "stored":
            line = next(line for line in run.stdout.splitlines() if line.startswith(f"skipped {name}:"))
            assert outcome in line, line

    store = Store(database)
    faces = store.training_faces()
    assert sorted(face.human_label for face in faces) == ["happy", "neutral", "sad"]
    assert {face.source for face in faces} == {"team-photos"} and {face.device_id for face in faces} == {IMPORT_DEVICE_ID}
    assert all(len(face.content_sha256) == 64 and face.model_version == "1.0.0" for face in faces)
    assert store.db.query("SELECT DISTINCT labelled_by FROM labels") == [("bob",)]
    crops = {face.human_label: decode_crop(store.crop_png(face.id)) for face in faces}
    # Cut exactly like the edge cuts the same picture's face.
    assert np.array_equal(crops["happy"], edge_crop(media_file("justin.jpg")))
    assert crops["sad"].shape == (64, 64)
    # Imported faces are no camera's: the dashboard's charts leave them out.
    dashboard = DashboardStore(database)
    assert dashboard.emotion_share(None, 0, 4e9, 3600) == [] and dashboard.devices_with_faces(None, None) == []
    dashboard.close()
    store.close()

    again = run_import(database, model_store, str(tmp_path / "faces"), "--source", "team-photos")
    assert again.returncode == 0 and "0 faces stored (none), 4 duplicates of stored faces" in again.stdout


def test_a_csv_of_paths_and_labels(tmp_path, database, model_store):
    justin = media_file("justin.jpg")
    listing = tmp_path / "labels.csv"
    shutil.copy(justin, tmp_path / "j.jpg")
    listing.write_text(f"path,label\nj.jpg,Happy\n{media_file('group_photo.jpg')},fear\nmissing.jpg,sad\nj.jpg,grumpy\nonly-one-column\n")

    run = run_import(database, model_store, "--csv", str(listing))

    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "2 faces stored (fear 1, happy 1), 0 duplicates of stored faces, 3 files skipped" in run.stdout
    assert "skipped missing.jpg: cannot read" in run.stdout and "unknown label 'grumpy'" in run.stdout
    assert "expected path,label, got 1 columns" in run.stdout
    store = Store(database)
    assert {face.source for face in store.training_faces()} == {"labels"}  # the CSV's name by default
    store.close()


def test_bad_arguments_and_an_unmigrated_database_are_refused(tmp_path, database, model_store):
    assert run_import(database, model_store).returncode == 2
    missing = run_import(database, model_store, str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "latin1.csv").write_bytes("path,label\nvisage-\xe9t\xe9.jpg,happy\n".encode("latin-1"))
    unreadable = run_import(database, model_store, "--csv", str(tmp_path / "latin1.csv"))
    assert unreadable.returncode == 2 and "cannot read" in unreadable.stderr
    (tmp_path / "empty").mkdir()
    fresh = run_import(f"sqlite:///{tmp_path / 'fresh.db'}", model_store, str(tmp_path / "empty"))
    assert fresh.returncode == 3 and "emq-db migrate" in fresh.stderr


def test_the_import_uses_the_edge_defaults():
    """One place may change a default without the other: this test says so."""
    settings, detection, classification = ImportSettings(), DetectionSettings(), ClassificationSettings()
    for name in ("scale_factor", "min_neighbors", "min_face_size", "max_face_size", "detect_scale"):
        assert getattr(settings, name) == getattr(detection, name), name
    for name in ("crop_margin", "crop_margin_y", "crop_offset_y"):
        assert getattr(settings, name) == getattr(classification, name), name


@pytest.mark.parametrize(("height", "width", "crop"), [(48, 48, True), (96, 80, True), (64, 90, False), (97, 97, False), (200, 200, False)])
def test_small_square_ish_pictures_are_crops_already(height, width, crop):
    assert is_face_crop(np.zeros((height, width), np.uint8), ImportSettings()) is crop
