"""The emq-model command line, on commands that do not need TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.cli import main
from runtime.registry import ModelEntry, ModelRegistry


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with one registered, current stand-in model."""
    registry = ModelRegistry(tmp_path / "store")
    (registry.store / "1.0.0").mkdir(parents=True)
    (registry.store / "1.0.0" / "model.tflite").write_bytes(b"stand-in model")
    entry = ModelEntry(
        name="mini_xception_fer2013",
        version="1.0.0",
        files={"tflite": registry.describe_file("1.0.0/model.tflite")},
        metrics={"fer2013_val_top1": 0.6523},
        source="test fixture",
    )
    registry.register(entry)
    registry.set_current("1.0.0")
    return registry.store


def test_list_marks_the_current_version(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--store", str(store)]) == 0

    row = capsys.readouterr().out.splitlines()[1]
    assert row.startswith("* 1.0.0") and "0.6523" in row


def test_show_defaults_to_the_current_version(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "--store", str(store)]) == 0

    assert json.loads(capsys.readouterr().out)["version"] == "1.0.0"


def test_errors_are_one_line_and_exit_non_zero(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "2.0.0", "--store", str(store)]) == 1

    error = capsys.readouterr().err.strip()
    assert error.startswith("emq-model: error: model version 2.0.0 is not registered")
    assert len(error.splitlines()) == 1


def test_show_on_an_empty_store_explains_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "--store", str(tmp_path)]) == 1

    assert "import-pretrained" in capsys.readouterr().err


def test_evaluate_requires_an_existing_npz(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--store", str(store), "--npz", str(tmp_path / "missing.npz")]) == 1

    assert "does not exist" in capsys.readouterr().err
