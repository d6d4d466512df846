"""Register a trained model as a new version of the store: files, checks, registry entry.

    version = next_version(registry)                      # 1.0.0 -> 1.1.0
    entry = register_version(registry, model, version=version, parent="1.0.0", metrics=..., data_counts=...,
                             source="retrained on 412 labelled faces", make_current=decision.promote)

Every version is written as ``<store>/<version>/model.keras`` (for the next
fine-tuning) and ``<store>/<version>/model.tflite`` (float32, dynamic batch,
for the edge).  Before anything is registered, the TFLite file is loaded with
the edge's runner and must give the Keras probabilities (batched and one face
at a time), and the saved ``.keras`` must reload to the same function.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from models.convert import (
    KERAS_FILENAME,
    TFLITE_FILENAME,
    _save_keras_atomically,
    _write_atomically,
    check_tflite_matches_keras,
    export_tflite,
    max_output_difference,
    probe_batch,
)
from runtime.registry import (
    MODEL_NAME,
    PRETRAINED_VERSION,
    ModelEntry,
    ModelNotFoundError,
    ModelRegistry,
    VersionConflictError,
    parse_version,
)

logger = logging.getLogger(__name__)

# Saving and reloading a .keras file must not change the function at all.
MAX_RELOAD_DIFFERENCE = 1e-6
VERIFICATION_FACES = 16


def next_version(registry: ModelRegistry) -> str:
    """The minor bump of the highest registered version ("1.0.0" -> "1.1.0", "1.9.0" -> "1.10.0").

    An empty store gives ``PRETRAINED_VERSION`` ("1.0.0").
    """
    versions = registry.versions()
    if not versions:
        return PRETRAINED_VERSION
    major, minor, _ = parse_version(versions[-1])  # versions() is sorted numerically
    return f"{major}.{minor + 1}.0"


def register_version(
    registry: ModelRegistry,
    model: keras.Model,
    *,
    version: str,
    parent: str | None,
    metrics: Mapping[str, float] | None = None,
    data_counts: Mapping[str, int] | None = None,
    source: str,
    make_current: bool = False,
    tflite_path: Path | None = None,
    name: str = MODEL_NAME,
) -> ModelEntry:
    """Save, verify and register ``model`` as ``version``; optionally make it current.

    # Arguments
        registry: The store to write into.
        model: The trained Keras model (e.g. ``TrainingRun.model``).
        version: New "MAJOR.MINOR.PATCH" version, usually ``next_version(registry)``.
            Must not be registered yet (its files are never overwritten).
        parent: The version it was fine-tuned from (must be registered), or None.
        metrics: Numbers to record, e.g. ``{"fer2013_val_top1": 0.66}``.
            Non-finite values (an empty set's NaN) are left out with a warning.
        data_counts: Faces per data set, e.g. ``{"human_labels": 412}``.
        source: Where the weights came from, in words.
        make_current: Point the store's ``current`` at this version (what the
            edges will run); pass the gate's ``decision.promote``.
        tflite_path: An already exported TFLite file of ``model`` (e.g. the one
            the gate evaluated), copied instead of exporting again.  It is
            checked against ``model`` all the same.
        name: Model name recorded in the entry.

    # Returns
        The registered ``ModelEntry`` (with sha256 and size of both files).
    """
    parse_version(version)
    _check_version_is_new(registry, version, parent)
    directory = registry.store / version
    created_directory = not directory.exists()
    try:
        keras_path, tflite_file = _write_version_files(model, directory, tflite_path)
        _verify_version_files(model, keras_path, tflite_file)
        entry = ModelEntry(
            name=name,
            version=version,
            parent=parent,
            files={
                "tflite": registry.describe_file(f"{version}/{TFLITE_FILENAME}"),
                "keras": registry.describe_file(f"{version}/{KERAS_FILENAME}"),
            },
            metrics=_finite_metrics(metrics or {}),
            data_counts={key: int(value) for key, value in (data_counts or {}).items()},
            source=source,
            created_at=datetime.now(timezone.utc),
        )
        registry.register(entry)
    except BaseException:
        if created_directory:
            # Nothing registered points at these files; leave no half-made version behind.
            shutil.rmtree(directory, ignore_errors=True)
        raise
    if make_current:
        registry.set_current(version)
    current_note = " and set it current" if make_current else ""
    logger.info("Registered %s %s (parent %s)%s in %s", name, version, parent, current_note, registry.store)
    return entry


def _check_version_is_new(registry: ModelRegistry, version: str, parent: str | None) -> None:
    """Fail before writing any file if the version exists or the parent does not."""
    versions = registry.versions()
    if version in versions:
        raise VersionConflictError(f"version {version} is already registered in {registry.store}; use next_version()")
    if parent is not None and parent not in versions:
        raise ModelNotFoundError(f"parent version {parent} is not registered in {registry.store}")


def _write_version_files(model: keras.Model, directory: Path, tflite_path: Path | None) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    keras_path = _save_keras_atomically(model, directory / KERAS_FILENAME)
    tflite_file = directory / TFLITE_FILENAME
    if tflite_path is None:
        export_tflite(model, tflite_file)
    else:
        _write_atomically(tflite_file, Path(tflite_path).read_bytes())
    return keras_path, tflite_file


def _verify_version_files(model: keras.Model, keras_path: Path, tflite_path: Path) -> None:
    """The TFLite file runs on the edge's runner and matches the model; the .keras reloads to the same model."""
    faces = probe_batch(count=VERIFICATION_FACES, seed=11)
    check_tflite_matches_keras(tflite_path, model, faces)
    reloaded = keras.models.load_model(keras_path, compile=False)
    difference = max_output_difference(reloaded, model, faces)
    if not difference < MAX_RELOAD_DIFFERENCE:
        raise AssertionError(f"{keras_path} reloads to a different model (max |diff| {difference:.3g})")


def _finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    finite = {}
    for key, value in metrics.items():
        if value is None or not math.isfinite(float(value)):
            logger.warning("metric %s is %r; not recorded", key, value)
            continue
        finite[key] = float(np.float64(value))
    return finite
