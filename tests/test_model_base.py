"""``emq-model train-base``: the selection split comes from FER2013 Training only, the run stops on its
target or budget, resumes from its checkpoint folder, reports PublicTest with and without flip TTA,
and registers a model (with its card) only when the gate promotes it. Tiny runs: a few hundred faces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.base_model import BaseRunOptions, RunLog, default_version, load_parts, selection_split

REPO_STORE = Path(__file__).resolve().parents[1] / "models" / "store"
FER2013_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013_trainval.npz"
TINY_RUN = ["--train-limit", "200", "--evaluation-limit", "100", "--latency-repeats", "20", "--max-ms-per-face", "50"]


def test_selection_split_cuts_training_rows_into_two_disjoint_parts() -> None:
    train, selection = selection_split(28_709, 0.1, seed=0)
    assert len(selection) == 2871 and len(train) == 28_709 - 2871
    assert not np.intersect1d(train, selection).size
    assert np.array_equal(np.union1d(train, selection), np.arange(28_709))
    again_train, again_selection = selection_split(28_709, 0.1, seed=0)
    assert np.array_equal(selection, again_selection) and np.array_equal(train, again_train)


def test_selection_never_holds_a_public_test_face(tmp_path: Path) -> None:
    # PublicTest faces are all 255 and Training faces never are: a selection face from x_val would show.
    rng = np.random.default_rng(0)
    npz = tmp_path / "fer.npz"
    np.savez(npz, x_train=rng.integers(0, 255, (500, 48, 48), dtype=np.uint8), y_train=rng.integers(0, 7, 500),
             x_val=np.full((90, 48, 48), 255, np.uint8), y_val=rng.integers(0, 7, 90))
    parts = load_parts(BaseRunOptions(npz=npz, checkpoint_dir=tmp_path / "run"))
    assert len(parts.selection[1]) == 50 and len(parts.train[1]) == 450
    assert parts.selection[0].max() < 255 and parts.train[0].max() < 255
    assert len(parts.public_test[1]) == 90 and parts.public_test[0].min() == 255
    assert len(parts.gate[1]) == 60  # the retraining gate's cut: the rest of PublicTest after its selection part


def test_the_budget_counts_every_attempt_of_a_run(tmp_path: Path) -> None:
    first = RunLog(tmp_path)
    first.started -= 100  # as if the first attempt had run 100 s before it was killed
    first("epoch 1/4 batch 7/404")
    second = RunLog(tmp_path)
    assert 100 <= second.spent_before < 110
    assert 3490 <= second.remaining(3600) <= 3500 and second.remaining(None) is None
    assert second.remaining(50) == 1.0  # spent: train() still gets a valid budget and stops at once
    assert "epoch 1/4 batch 7/404" in (tmp_path / "progress.log").read_text()


def test_a_base_model_is_a_new_major_version(tmp_path: Path) -> None:
    from runtime.registry import ModelRegistry

    assert default_version(ModelRegistry(tmp_path / "empty")) == "1.0.0"
    if (REPO_STORE / "registry.json").is_file():
        assert default_version(ModelRegistry(REPO_STORE)).endswith(".0.0")


# -- tiny runs of the command (TensorFlow) ----------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A temporary copy of the repository's store (never the real one)."""
    pytest.importorskip("tensorflow", reason="training needs the 'train' extra (tensorflow-cpu, keras)")
    if not FER2013_NPZ.is_file():
        pytest.skip(f"{FER2013_NPZ} not found: the FER2013 data lives beside the repo in ../shared/data")
    if not (REPO_STORE / "1.0.0" / "model.keras").is_file():
        pytest.skip("models/store has no 1.0.0: run 'emq-model import-pretrained'")
    copy = tmp_path / "store"
    shutil.copytree(REPO_STORE, copy, symlinks=False)
    return copy


def run_train_base(capsys: pytest.CaptureFixture[str], *arguments: str) -> dict:
    from models.cli import main

    assert main(["train-base", "--npz", str(FER2013_NPZ), *TINY_RUN, *arguments]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_tiny_fine_tuning_stops_on_its_target_reports_both_public_test_figures_and_resumes(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "run"
    common = ["--store", str(store), "--checkpoint-dir", str(checkpoint), "--card-dir", str(tmp_path / "cards")]
    summary = run_train_base(capsys, *common, "--epochs", "3", "--warmup-epochs", "0", "--target-accuracy", "0.05")
    assert summary["training"]["stopped_reason"] == "target" and summary["training"]["epochs_run"] == 1
    assert len(summary["learning_curve"]) == 1 and "selection_accuracy" in summary["learning_curve"][0]
    assert Path(summary["learning_curves_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the curve, to look at
    test = summary["public_test"]
    assert test["faces"] == 100 and 0 <= test["top1"] <= 1 and 0 <= test["top1_flip_tta"] <= 1
    assert summary["current"]["version"] == "1.0.0" and "top1_flip_tta" in summary["current"]
    assert summary["parameters"] <= 60_000 and summary["ms_per_face_one_core"] > 0
    assert summary["gate"] in {"refused", "promoted"}
    assert json.loads((checkpoint / "summary.json").read_text())["candidate_sha256"] == summary["candidate_sha256"]
    assert "epoch 0 (starting point" in (checkpoint / "progress.log").read_text()

    again = run_train_base(capsys, *common, "--epochs", "3", "--warmup-epochs", "0", "--target-accuracy", "0.05")
    assert "training already finished" in (checkpoint / "progress.log").read_text()
    assert again["candidate_sha256"] == summary["candidate_sha256"]  # the same model, not trained again
    if summary["gate"] != "promoted":
        assert json.loads((store / "registry.json").read_text())["current"] == "1.0.0"


@pytest.mark.slow
def test_from_scratch_on_an_empty_store_stops_on_budget_and_registers_with_a_card(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty-store"
    cards = tmp_path / "docs" / "model-cards"
    summary = run_train_base(capsys, "--store", str(empty), "--checkpoint-dir", str(tmp_path / "run"), "--card-dir", str(cards),
                             "--from-scratch", "--epochs", "2", "--warmup-epochs", "0", "--time-budget-s", "1")
    assert summary["training"]["stopped_reason"] == "time_budget"
    # Nothing to beat: every gate face the candidate gets right is a win (and it gets some right by chance).
    assert summary["gate"] == "promoted" and summary["registered"]["version"] == "1.0.0"
    registry = json.loads((empty / "registry.json").read_text())
    assert registry["current"] == "1.0.0"
    card = json.loads((cards / "1.0.0" / "model-card.json").read_text())
    assert card["decision"] == "promoted" and "fer2013" in card["evaluation"]
    markdown = (tmp_path / "docs" / "model-card-1.0.0.md").read_text()
    assert "flip test-time augmentation" in markdown and "PublicTest chose nothing" in markdown


@pytest.mark.slow
def test_flip_tta_is_the_mean_of_face_and_mirror_probabilities(store: Path) -> None:
    from models.convert import evaluate_tflite, evaluate_tflite_with_flip

    faces = np.random.default_rng(3).uniform(-1, 1, (12, 64, 64, 1)).astype(np.float32)
    labels = np.arange(12) % 7
    tflite = store / "1.0.0" / "model.tflite"
    plain, flipped = evaluate_tflite_with_flip(tflite, faces, labels, num_threads=1)
    mirror = evaluate_tflite(tflite, faces[:, :, ::-1, :].copy(), labels, num_threads=1)
    assert np.allclose(flipped.probabilities, (plain.probabilities + mirror.probabilities) / 2)
    assert np.array_equal(plain.probabilities, evaluate_tflite(tflite, faces, labels, num_threads=1).probabilities)


def test_fine_tuning_keeps_the_last_epoch_and_from_scratch_early_stops_unless_told(tmp_path: Path) -> None:
    from models.cli import _build_parser, base_training_settings

    def settings(*extra: str):
        return base_training_settings(_build_parser().parse_args(["train-base", "--npz", str(tmp_path / "f.npz"), *extra]))

    assert settings().keep_last and settings().learning_rate == 5e-4
    assert not settings("--from-scratch").keep_last and settings("--from-scratch").learning_rate == 1e-3
    assert not settings("--no-keep-last").keep_last and settings("--from-scratch", "--keep-last").keep_last


def test_distillation_from_scratch_needs_a_teacher_and_current_names_the_default(tmp_path: Path) -> None:
    from models.base_model import teacher_path
    from models.cli import _build_parser, base_training_settings
    from runtime.registry import ModelRegistry

    def settings(*extra: str):
        return base_training_settings(_build_parser().parse_args(["train-base", "--npz", str(tmp_path / "f.npz"), *extra]))

    registry = ModelRegistry(tmp_path / "store")
    assert settings("--distillation", "0.5").distillation == 0.5 and settings().distillation == 0.0
    assert teacher_path(None, settings("--from-scratch"), registry, None) is None  # no distillation: no teacher
    assert teacher_path(None, settings("--distillation", "0.5"), registry, None) is None  # fine-tuning: the start teaches
    with pytest.raises(ValueError, match="needs a --teacher"):
        teacher_path(None, settings("--from-scratch", "--distillation", "0.5"), registry, None)
    with pytest.raises(LookupError, match="no current model"):
        teacher_path("current", settings("--from-scratch", "--distillation", "0.5"), registry, None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        teacher_path(str(tmp_path / "none.keras"), settings("--from-scratch", "--distillation", "0.5"), registry, None)
    teacher = tmp_path / "teacher.keras"
    teacher.write_bytes(b"")
    assert teacher_path(str(teacher), settings("--from-scratch", "--distillation", "0.5"), registry, None) == teacher
