"""The JSON model registry, on a temporary store with small stand-in model files."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from contract.emotions import EMOTIONS
from runtime.registry import (
    ModelEntry,
    ModelFile,
    ModelNotFoundError,
    ModelRegistry,
    ModelVerificationError,
    RegistryError,
    VersionConflictError,
    default_store,
    sha256_file,
)


def write_version_files(registry: ModelRegistry, version: str, content: bytes = b"model bytes") -> None:
    directory = registry.store / version
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.tflite").write_bytes(b"tflite " + content)
    (directory / "model.keras").write_bytes(b"keras " + content)


def make_entry(registry: ModelRegistry, version: str, parent: str | None = None, **overrides: object) -> ModelEntry:
    """An entry for files written by write_version_files."""
    fields: dict[str, object] = {
        "name": "mini_xception_fer2013",
        "version": version,
        "parent": parent,
        "files": {
            "tflite": registry.describe_file(f"{version}/model.tflite"),
            "keras": registry.describe_file(f"{version}/model.keras"),
        },
        "metrics": {"fer2013_val_top1": 0.652},
        "data_counts": {"fer2013_val": 3589},
        "source": "test fixture",
    }
    fields.update(overrides)
    return ModelEntry(**fields)


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "store")


@pytest.fixture
def registered(registry: ModelRegistry) -> ModelEntry:
    write_version_files(registry, "1.0.0")
    entry = make_entry(registry, "1.0.0")
    registry.register(entry)
    return entry


def test_empty_store_has_no_versions_and_no_current(registry: ModelRegistry) -> None:
    assert registry.versions() == []
    assert registry.current() is None


def test_register_then_get_round_trips_through_json(registry: ModelRegistry, registered: ModelEntry) -> None:
    reloaded = ModelRegistry(registry.store).get("1.0.0")

    assert reloaded == registered
    assert reloaded.labels == EMOTIONS
    assert reloaded.created_at.utcoffset().total_seconds() == 0
    document = json.loads(registry.registry_path.read_text())
    assert document["models"][0]["files"]["tflite"]["sha256"] == sha256_file(registry.store / "1.0.0/model.tflite")
    # created_at is ISO-8601 UTC in the file.
    assert datetime.fromisoformat(document["models"][0]["created_at"].replace("Z", "+00:00")).tzinfo is not None


def test_set_current_and_path_of(registry: ModelRegistry, registered: ModelEntry) -> None:
    registry.set_current("1.0.0")

    current = registry.current()
    assert current is not None and current.version == "1.0.0"
    assert registry.path_of(current) == registry.store / "1.0.0" / "model.tflite"
    assert registry.path_of(current, kind="keras") == registry.store / "1.0.0" / "model.keras"
    with pytest.raises(ModelNotFoundError):
        registry.path_of(current, kind="onnx")


def test_versions_are_ordered_numerically(registry: ModelRegistry, registered: ModelEntry) -> None:
    for version, parent in [("1.10.0", "1.0.0"), ("1.2.0", "1.0.0")]:
        write_version_files(registry, version, content=version.encode())
        registry.register(make_entry(registry, version, parent=parent))

    assert registry.versions() == ["1.0.0", "1.2.0", "1.10.0"]


def test_verify_catches_a_corrupted_file(registry: ModelRegistry, registered: ModelEntry) -> None:
    tflite_path = registry.path_of(registered)
    corrupted = bytearray(tflite_path.read_bytes())
    corrupted[0] ^= 0xFF  # same size, different content: only the sha256 can tell
    tflite_path.write_bytes(bytes(corrupted))

    with pytest.raises(ModelVerificationError, match="sha256"):
        registry.verify(registered)


def test_verify_catches_a_missing_or_truncated_file(registry: ModelRegistry, registered: ModelEntry) -> None:
    keras_path = registry.path_of(registered, kind="keras")
    keras_path.write_bytes(b"short")
    with pytest.raises(ModelVerificationError, match="bytes"):
        registry.verify(registered)

    keras_path.unlink()
    with pytest.raises(ModelVerificationError, match="missing"):
        registry.verify(registered)


def test_register_refuses_files_that_do_not_verify(registry: ModelRegistry) -> None:
    write_version_files(registry, "1.0.0")
    entry = make_entry(registry, "1.0.0")
    (registry.store / "1.0.0/model.tflite").write_bytes(b"replaced")

    with pytest.raises(ModelVerificationError):
        registry.register(entry)
    assert registry.versions() == []


def test_registering_the_same_entry_again_is_a_no_op(registry: ModelRegistry, registered: ModelEntry) -> None:
    registry.register(registered)

    assert registry.versions() == ["1.0.0"]


def test_a_different_entry_under_a_registered_version_conflicts(
    registry: ModelRegistry, registered: ModelEntry
) -> None:
    changed = registered.model_copy(update={"metrics": {"fer2013_val_top1": 0.7}})

    with pytest.raises(VersionConflictError):
        registry.register(changed)
    registry.register(changed, replace=True)
    assert registry.get("1.0.0").metrics == {"fer2013_val_top1": 0.7}


def test_parent_must_be_registered(registry: ModelRegistry, registered: ModelEntry) -> None:
    write_version_files(registry, "1.1.0")

    with pytest.raises(ModelNotFoundError, match="parent"):
        registry.register(make_entry(registry, "1.1.0", parent="0.9.0"))


def test_unknown_version_errors_name_what_is_registered(registry: ModelRegistry, registered: ModelEntry) -> None:
    with pytest.raises(ModelNotFoundError, match=r"2\.0\.0.*registered: 1\.0\.0"):
        registry.get("2.0.0")
    with pytest.raises(ModelNotFoundError):
        registry.set_current("2.0.0")


@pytest.mark.parametrize(
    "overrides",
    [
        {"version": "1.0"},
        {"version": "v1.0.0"},
        {"parent": "latest"},
        {"labels": tuple(reversed(EMOTIONS))},
        {"created_at": datetime(2025, 1, 1)},  # naive: ambiguous across hosts
        {"unexpected_field": 1},
    ],
)
def test_entries_reject_invalid_fields(registry: ModelRegistry, overrides: dict[str, object]) -> None:
    write_version_files(registry, "1.0.0")

    fields = make_entry(registry, "1.0.0").model_dump() | overrides

    with pytest.raises(ValidationError):
        ModelEntry(**fields)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside/model.tflite", ""])
def test_file_paths_must_stay_inside_the_store(registry: ModelRegistry, path: str) -> None:
    write_version_files(registry, "1.0.0")
    record = registry.describe_file("1.0.0/model.tflite")

    with pytest.raises(ValidationError):
        ModelFile(path=path, sha256=record.sha256, size_bytes=record.size_bytes)


def test_writes_leave_no_temporary_files(registry: ModelRegistry, registered: ModelEntry) -> None:
    registry.set_current("1.0.0")

    leftovers = [path.name for path in registry.store.iterdir() if path.name.startswith(".registry-")]
    assert leftovers == []


def test_an_invalid_registry_file_is_a_clear_error(registry: ModelRegistry) -> None:
    registry.store.mkdir(parents=True)
    registry.registry_path.write_text('{"current": "1.0.0", "models": []}')

    with pytest.raises(RegistryError, match="not a valid registry"):
        registry.current()


def test_default_store_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMQ_MODEL_STORE", str(tmp_path / "elsewhere"))
    assert default_store() == tmp_path / "elsewhere"
    assert ModelRegistry().store == tmp_path / "elsewhere"

    monkeypatch.delenv("EMQ_MODEL_STORE")
    assert default_store().parts[-2:] == ("models", "store")
