"""Promotion: the gate, registering a new version, and its model card.

The "worse" model is a mini-Xception trained from scratch for one epoch on a
few hundred faces (close to chance); the "better" one is the pretrained
1.0.0 from ``models/store``.  Every write goes to a pytest temporary store:
the repository's store must come out byte-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the gate and registration need the 'train' extra (tensorflow-cpu, keras)")

import keras

from models.card import write_model_card
from models.convert import evaluate_tflite, export_tflite
from models.gate import GateDecision, confusion_matrix, gate
from runtime.preprocess import resize_faces
from runtime.registry import (
    ModelEntry,
    ModelNotFoundError,
    ModelRegistry,
    RegistryError,
    VersionConflictError,
)
from runtime.tflite_runner import TFLiteEmotionModel
from models.training import (
    TrainingData,
    TrainingRun,
    TrainingSettings,
    model_inputs,
    train,
)
from models.versions import next_version, register_version

REPO_STORE = Path(__file__).resolve().parents[1] / "models" / "store"
FER2013_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013_trainval.npz"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

LabelledFaces = tuple[np.ndarray, np.ndarray]


def random_subset(faces: np.ndarray, labels: np.ndarray, count: int, seed: int) -> LabelledFaces:
    # FER2013 splits are sorted by class: a slice would hold one emotion only.
    chosen = np.random.default_rng(seed).choice(len(labels), size=count, replace=False)
    return resize_faces(faces[chosen]), labels[chosen].astype(np.int64)


@pytest.fixture(scope="module")
def fer2013() -> dict[str, LabelledFaces]:
    if not FER2013_NPZ.is_file():
        pytest.skip(f"{FER2013_NPZ} not found: the FER2013 data lives beside the repo in ../shared/data")
    with np.load(FER2013_NPZ) as data:
        return {
            "train": random_subset(data["x_train"], data["y_train"], 320, seed=11),
            "validation": random_subset(data["x_val"], data["y_val"], 300, seed=12),
        }


@pytest.fixture(scope="module")
def repo_registry() -> ModelRegistry:
    registry = ModelRegistry(REPO_STORE)
    try:
        registry.verify(registry.get("1.0.0"))
    except RegistryError as error:  # absent or corrupt
        pytest.skip(f"models/store has no verified 1.0.0 ({error}); run 'emq-model import-pretrained'")
    return registry


@pytest.fixture(scope="module")
def pretrained_tflite(repo_registry: ModelRegistry) -> Path:
    return repo_registry.path_of(repo_registry.get("1.0.0"), "tflite")


@pytest.fixture(scope="module")
def scratch_run(fer2013: dict[str, LabelledFaces]) -> TrainingRun:
    """One epoch from scratch on 320 faces: a model that is clearly worse than the pretrained one."""
    x_train, y_train = fer2013["train"]
    data = TrainingData(x_train, y_train, validation={"fer2013": fer2013["validation"]})
    settings = TrainingSettings(epochs=1, learning_rate=1e-3, from_scratch=True, time_budget_s=60)
    return train(data, settings=settings, progress=None)


@pytest.fixture(scope="module")
def scratch_tflite(scratch_run: TrainingRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tflite(scratch_run.model, tmp_path_factory.mktemp("candidate") / "model.tflite")


@pytest.fixture
def store(repo_registry: ModelRegistry, tmp_path: Path) -> ModelRegistry:
    """A temporary store holding a copy of 1.0.0 (current), so tests never write into models/store."""
    entry = repo_registry.get("1.0.0")
    copy = ModelRegistry(tmp_path / "store")
    for kind in entry.files:
        target = copy.path_of(entry, kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(repo_registry.path_of(entry, kind).read_bytes())
    copy.register(entry)
    copy.set_current(entry.version)
    return copy


@pytest.fixture(scope="module", autouse=True)
def repository_store_is_untouched() -> object:
    registry_file = REPO_STORE / "registry.json"
    before = registry_file.read_bytes() if registry_file.exists() else None
    yield
    after = registry_file.read_bytes() if registry_file.exists() else None
    assert after == before, "a test wrote into models/store"
    assert not (REPO_STORE / "1.1.0").exists()


# -- the gate -----------------------------------------------------------------------------------
# The rule itself, on constructed tables, is tests/test_gate_rule.py; here both models really run.


def gate_sets(fer2013: dict[str, LabelledFaces], deployment_count: int = 200) -> tuple[LabelledFaces, dict[str, LabelledFaces]]:
    """Disjoint parts of the held-out faces: the first ``deployment_count`` stand in for collected faces."""
    faces, labels = fer2013["validation"]
    return (faces[:deployment_count], labels[:deployment_count]), {"fer2013": (faces[deployment_count:], labels[deployment_count:])}


def test_the_gate_refuses_a_clearly_worse_candidate(
    scratch_tflite: Path, pretrained_tflite: Path, fer2013: dict[str, LabelledFaces]
) -> None:
    deployment, references = gate_sets(fer2013)

    decision = gate(scratch_tflite, pretrained_tflite, deployment, references)

    assert decision.outcome == "refused" and not decision.promote
    collected = decision.comparisons["collected"]
    assert collected.current_top1 > 0.5 and collected.candidate_top1 < collected.current_top1 - 0.1
    assert collected.counts.current_only > collected.counts.candidate_only and "worse" in collected.reason
    assert not decision.comparisons["fer2013"].passed
    assert decision.reasons[-1].startswith("refused")
    assert np.asarray(decision.confusion["collected"]).shape == (7, 7)
    assert np.asarray(decision.confusion["collected"]).sum() == 200 and decision.counts == {"collected": 200, "fer2013": 100}


def test_the_gate_promotes_a_clearly_better_candidate(
    scratch_tflite: Path, pretrained_tflite: Path, fer2013: dict[str, LabelledFaces]
) -> None:
    deployment, references = gate_sets(fer2013)

    decision = gate(pretrained_tflite, scratch_tflite, deployment, references)

    assert decision.outcome == "promoted", decision.reasons
    assert decision.comparisons["collected"].mid_p < 1e-6
    assert decision.comparisons["fer2013"].interval[0] > 0
    assert decision.reasons[-1].startswith("promoted")


def test_too_few_or_no_deployment_faces_leave_the_gate_undecided(
    scratch_tflite: Path, pretrained_tflite: Path, fer2013: dict[str, LabelledFaces]
) -> None:
    faces, labels = fer2013["validation"]
    references = {"fer2013": (faces[10:], labels[10:])}

    few = gate(pretrained_tflite, scratch_tflite, (faces[:10], labels[:10]), references)
    none = gate(pretrained_tflite, scratch_tflite, (faces[:0], labels[:0]), references)

    assert few.outcome == "undecided" and "10 labelled deployment faces" in few.reasons[-1]
    assert few.comparisons["collected"].candidate_top1 is not None  # measured and reported, but not deciding
    assert none.outcome == "undecided" and none.scores["collected"] == {"candidate": None, "current": None}


def test_confusion_matrix_rows_are_true_classes() -> None:
    matrix = confusion_matrix(np.array([0, 0, 3, 6]), np.array([0, 3, 3, 6]))

    assert matrix[0, 0] == 1 and matrix[0, 3] == 1 and matrix[3, 3] == 1 and matrix[6, 6] == 1
    assert matrix.sum() == 4


# -- registration -------------------------------------------------------------------------------


def register_scratch(store: ModelRegistry, run: TrainingRun, tflite: Path | None, make_current: bool) -> ModelEntry:
    return register_version(
        store,
        run.model,
        version=next_version(store),
        parent="1.0.0",
        metrics={"fer2013_val_top1": 0.2, "collected_top1": float("nan")},
        data_counts={"human_labels": 40, "fer2013_train": 320},
        source="test: from scratch, 1 epoch",
        make_current=make_current,
        tflite_path=tflite,
    )


def test_register_version_writes_verified_files_with_their_parent(
    store: ModelRegistry, scratch_run: TrainingRun, scratch_tflite: Path
) -> None:
    assert next_version(store) == "1.1.0"

    entry = register_scratch(store, scratch_run, scratch_tflite, make_current=False)

    assert entry.version == "1.1.0" and entry.parent == "1.0.0"
    assert store.get("1.1.0") == entry
    store.verify(entry)
    assert store.path_of(entry) == store.store / "1.1.0" / "model.tflite"
    assert TFLiteEmotionModel(store.path_of(entry)).predict(np.zeros((2, 64, 64, 1), np.float32)).shape == (2, 7)
    keras.models.load_model(store.path_of(entry, "keras"), compile=False)
    assert entry.metrics == {"fer2013_val_top1": 0.2}  # the NaN of an empty set is not recorded
    assert entry.data_counts["human_labels"] == 40
    assert entry.created_at.utcoffset().total_seconds() == 0
    assert store.current().version == "1.0.0"  # not promoted
    assert next_version(store) == "1.2.0"


def test_register_version_exports_when_no_tflite_is_given_and_can_make_current(
    store: ModelRegistry, scratch_run: TrainingRun
) -> None:
    entry = register_scratch(store, scratch_run, tflite=None, make_current=True)

    store.verify(entry)
    assert store.current() == entry


def test_register_version_never_overwrites_nor_orphans(store: ModelRegistry, scratch_run: TrainingRun) -> None:
    tflite_before = (store.store / "1.0.0" / "model.tflite").read_bytes()

    with pytest.raises(VersionConflictError):
        register_version(store, scratch_run.model, version="1.0.0", parent=None, source="clash")
    with pytest.raises(ModelNotFoundError, match="parent"):
        register_version(store, scratch_run.model, version="1.5.0", parent="0.9.0", source="orphan")

    assert (store.store / "1.0.0" / "model.tflite").read_bytes() == tflite_before
    assert not (store.store / "1.5.0").exists()
    assert store.versions() == ["1.0.0"]


# -- model card ---------------------------------------------------------------------------------


def test_the_model_card_holds_the_decision_its_tests_and_the_figures(
    store: ModelRegistry,
    scratch_run: TrainingRun,
    scratch_tflite: Path,
    pretrained_tflite: Path,
    fer2013: dict[str, LabelledFaces],
    tmp_path: Path,
) -> None:
    deployment, references = gate_sets(fer2013)
    decision = gate(scratch_tflite, pretrained_tflite, deployment, references)
    entry = register_scratch(store, scratch_run, scratch_tflite, make_current=decision.promote)
    class_counts = {"happy": 120, "sad": 80, "neutral": 120}

    files = write_model_card(
        tmp_path / "cards" / entry.version,
        entry,
        decision=decision,
        history=scratch_run.history,
        class_counts=class_counts,
        training=scratch_run.summary(),
    )

    assert [path.name for path in files.paths] == ["model-card.json", "confusion.png", "learning-curves.png"]
    for figure in (files.confusion, files.learning_curves):
        assert figure.read_bytes().startswith(PNG_SIGNATURE)
    card = json.loads(files.json.read_text())
    assert card["version"] == "1.1.0" and card["parent"] == "1.0.0" and card["model_card_schema"] == 2
    assert card["decision"] == "refused" and card["gate"]["promote"] is False and card["gate"]["outcome"] == "refused"
    assert card["gate"]["reasons"] == decision.reasons
    tested = card["gate"]["sets"]["collected"]
    counts = decision.comparisons["collected"].counts
    assert (tested["b_current_only_right"], tested["c_candidate_only_right"]) == (counts.current_only, counts.candidate_only)
    assert tested["mcnemar_mid_p"] == pytest.approx(decision.comparisons["collected"].mid_p)
    assert len(tested["interval"]) == 2 and "McNemar" in card["gate"]["tests"]["deployment"]
    assert card["gate"]["rule"] == {"alpha": 0.05, "noninferiority_margin": 0.005, "confidence": 0.95, "min_deployment_faces": 50}
    assert card["gate"]["evaluated_registered_file"] is True
    assert card["tflite_sha256"] == entry.files["tflite"].sha256
    assert card["evaluation"]["fer2013"]["top1"] == decision.scores["fer2013"]["candidate"]
    assert card["evaluation"]["collected"]["confusion"] == decision.confusion["collected"]
    assert card["class_balance"]["counts"]["disgust"] == 0 and card["class_balance"]["total"] == 320
    assert card["training"]["epochs_run"] == 1 and card["history_summary"]["epochs"] == 1
    assert card["data_counts"]["human_labels"] == 40
    assert any("decision about an individual" in use for use in card["out_of_scope_uses"])
    assert any("FER2013" in limitation for limitation in card["limitations"])


def test_an_undecided_gate_says_so_in_the_card(
    store: ModelRegistry, scratch_run: TrainingRun, scratch_tflite: Path, pretrained_tflite: Path,
    fer2013: dict[str, LabelledFaces], tmp_path: Path,
) -> None:
    faces, labels = fer2013["validation"]
    decision = gate(pretrained_tflite, scratch_tflite, (faces[:12], labels[:12]), {"fer2013": (faces[12:], labels[12:])})
    entry = register_scratch(store, scratch_run, scratch_tflite, make_current=decision.promote)

    card = json.loads(write_model_card(tmp_path / "card", entry, decision=decision).json.read_text())

    assert card["decision"] == "undecided" and card["gate"]["outcome"] == "undecided"
    assert "12 labelled deployment faces" in card["gate"]["reasons"][-1]
    assert card["gate"]["sets"]["collected"]["decides"] is False


def test_an_ungated_card_evaluates_the_registered_file(
    repo_registry: ModelRegistry, fer2013: dict[str, LabelledFaces], tmp_path: Path
) -> None:
    entry = repo_registry.get("1.0.0")
    tflite = repo_registry.path_of(entry)
    faces, labels = fer2013["validation"]

    files = write_model_card(
        tmp_path / "card", entry, decision=None, evaluation_sets={"fer2013_val": (faces, labels)}, tflite_path=tflite
    )

    card = json.loads(files.json.read_text())
    assert files.learning_curves is None and files.confusion is not None
    assert card["decision"] == "not gated (evaluation only)" and card["gate"] is None
    expected = evaluate_tflite(tflite, model_inputs(faces), labels).top1
    assert card["evaluation"]["fer2013_val"]["top1"] == pytest.approx(expected)
    assert sum(card["evaluation"]["fer2013_val"]["per_class_support"].values()) == 300


def test_an_ungated_card_refuses_a_file_that_is_not_the_registered_one(
    repo_registry: ModelRegistry, scratch_tflite: Path, fer2013: dict[str, LabelledFaces], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="sha256"):
        write_model_card(
            tmp_path / "card",
            repo_registry.get("1.0.0"),
            evaluation_sets={"fer2013_val": fer2013["validation"]},
            tflite_path=scratch_tflite,
        )


def test_gate_decision_serialises_to_json(scratch_tflite: Path, pretrained_tflite: Path, fer2013) -> None:
    deployment, references = gate_sets(fer2013)
    decision: GateDecision = gate(scratch_tflite, pretrained_tflite, deployment, references)

    document = json.loads(json.dumps(decision.to_json(), allow_nan=False))

    assert document["promote"] is False and document["rule"]["noninferiority_margin"] == 0.005
    assert document["sets"]["fer2013"]["faces"] == 100
