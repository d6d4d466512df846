"""Find and load the emotion model for the edge, with LiteRT only (never TensorFlow)."""

from __future__ import annotations

import os
from pathlib import Path

from models.registry import ModelRegistry, RegistryError, default_store
from models.tflite_runner import TFLiteEmotionModel

# Used when the store has no registry.json yet (a freshly converted model).
FALLBACK_MODEL_RELATIVE_PATH = Path("1.0.0") / "model.tflite"


class ModelNotAvailableError(FileNotFoundError):
    """No TFLite emotion model was found."""


def find_model_path(store: str | os.PathLike[str] | None = None) -> Path:
    """The TFLite file of the registry's current model, else ``<store>/1.0.0/model.tflite``.

    The store is ``$EMQ_MODEL_STORE`` or ``models/store`` (see models.registry).
    """
    registry = ModelRegistry(store)
    try:
        entry = registry.current()
        if entry is not None:
            path = registry.path_of(entry, "tflite")
            if path.is_file():
                return path
    except (RegistryError, OSError, ValueError):
        pass  # a missing or unreadable registry falls back to the conventional path
    fallback = Path(store) if store is not None else default_store()
    fallback = fallback / FALLBACK_MODEL_RELATIVE_PATH
    if fallback.is_file():
        return fallback
    raise ModelNotAvailableError(
        f"no emotion model: neither a current entry in {registry.registry_path} nor {fallback} exists"
    )


def load_emotion_model(path: str | os.PathLike[str] | None = None, num_threads: int = 1) -> TFLiteEmotionModel:
    """Load the TFLite emotion model (``path`` or the registry's current one) with LiteRT.

    One thread by default: on a 64x64 input the model takes ~1 ms, and extra
    threads would compete with video decoding and detection.
    """
    model_path = Path(path) if path is not None else find_model_path()
    if not model_path.is_file():
        raise ModelNotAvailableError(f"emotion model {model_path} does not exist")
    return TFLiteEmotionModel(model_path, num_threads=num_threads)
