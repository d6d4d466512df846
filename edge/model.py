"""The edge's view of the model registry: find, verify and load the TFLite model with LiteRT.

Never imports TensorFlow (a LiteRT process is ~60 MB, a TensorFlow one ~650 MB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.registry import ModelEntry, ModelRegistry, RegistryError
from models.tflite_runner import TFLiteEmotionModel


class ModelUnavailable(RuntimeError):
    """No usable model: the message says what to run."""


@dataclass
class LoadedModel:
    name: str
    version: str
    path: Path
    runner: TFLiteEmotionModel

    def predict(self, normalized_batch):
        return self.runner.predict(normalized_batch)


def select_entry(registry: ModelRegistry, version: str | None) -> ModelEntry:
    try:
        entry = registry.get(version) if version else registry.current()
    except RegistryError as error:
        raise ModelUnavailable(str(error)) from None
    if entry is None:
        raise ModelUnavailable(
            f"no current model in {registry.registry_path}: run `emq-model import-pretrained` (scripts/setup.sh does)"
        )
    return entry


def load_model(store: Path | None, version: str | None, num_threads: int) -> LoadedModel:
    """Load the pinned or current model after checking its sha256."""
    registry = ModelRegistry(store)
    entry = select_entry(registry, version)
    try:
        registry.verify(entry)
    except (RegistryError, OSError) as error:
        raise ModelUnavailable(f"model {entry.version} failed verification: {error}") from None
    path = registry.path_of(entry, "tflite")
    return LoadedModel(entry.name, entry.version, path, TFLiteEmotionModel(path, num_threads=num_threads))
