"""The edge's view of the model registry: find, verify and load the TFLite model with LiteRT.

Never imports TensorFlow (a LiteRT process is ~60 MB, a TensorFlow one ~650 MB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.registry import ModelEntry, ModelRegistry, RegistryError
from runtime.tflite_runner import TFLiteEmotionModel


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


class ModelSlot:
    """The model the pipeline calls, swappable between frames, with the previous one kept for rollback.

    The pipeline holds the slot, not a model, so a hot swap is one assignment
    on the agent thread: no frame ever sees half a model.
    """

    def __init__(self, loaded: LoadedModel) -> None:
        self.current = loaded
        self.previous: LoadedModel | None = None

    @property
    def name(self) -> str:
        return self.current.name

    @property
    def version(self) -> str:
        return self.current.version

    def predict(self, normalized_batch):
        return self.current.predict(normalized_batch)

    def swap(self, replacement: LoadedModel) -> None:
        self.previous, self.current = self.current, replacement

    def rollback(self) -> LoadedModel:
        if self.previous is None:
            raise ModelUnavailable("no previous model to roll back to")
        self.swap(self.previous)
        return self.current


def load_tflite(name: str, version: str, path: Path, num_threads: int) -> LoadedModel:
    """Load a TFLite file and prove it runs (one empty-ish batch) before anyone relies on it."""
    import numpy as np

    runner = TFLiteEmotionModel(path, num_threads=num_threads)
    probabilities = runner.predict(np.zeros((1, 64, 64, 1), np.float32))
    if probabilities.shape != (1, 7) or not np.all(np.isfinite(probabilities)):
        raise ModelUnavailable(f"model {version} gives {probabilities.shape} outputs, not 7 finite probabilities")
    return LoadedModel(name, version, path, runner)
