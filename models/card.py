"""Model cards: what a model version is, what it was trained on, how it scored, what it must not be used for.

``write_model_card`` writes into one directory per version::

    model-card.json       identity, file sha256, data counts, class balance, training summary,
                          evaluation, gate decision, intended use and limitations
    confusion.png         the model's confusion matrix on each evaluation set
    learning-curves.png   loss and accuracy per epoch (only when a training history is given)

After a retraining the scores come from the gate (``decision``).  For a model
that was not gated (the imported pretrained 1.0.0) pass ``decision=None`` and
``evaluation_sets``: the registered TFLite file is evaluated on them.

    python -m models.card 1.0.0 --npz ../shared/data/fer2013_trainval.npz --output docs/model-cards/1.0.0

regenerates the card of a registered version from the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")  # files only, never a display: the job runs headless
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from contract.emotions import EMOTIONS, NUM_EMOTIONS
from models.gate import GateDecision
from runtime.registry import (
    PRETRAINED_VERSION,
    ModelEntry,
    ModelRegistry,
    default_store,
    sha256_file,
)

logger = logging.getLogger(__name__)

CARD_SCHEMA_VERSION = 2  # 2: the gate's paired tests (outcome, per-set b/c counts, mid-p, interval)
JSON_FILENAME = "model-card.json"
CONFUSION_FILENAME = "confusion.png"
LEARNING_CURVES_FILENAME = "learning-curves.png"

INTENDED_USE = (
    "Aggregate, anonymous estimates of the facial expressions visible in a camera's view (e.g. how the mood "
    "of an audience or a demo booth varies over time), in a system whose users know they are being analysed. "
    "Research, teaching and demonstration of an edge-to-cloud ML pipeline."
)
OUT_OF_SCOPE_USES = [
    (
        "Any decision about an individual person: hiring, admission, grading, policing, border control, "
        "insurance, credit, medical or psychological assessment, lie detection."
    ),
    (
        "Inferring a person's inner emotional state: the model labels facial configurations; people do not "
        "reliably show what they feel, nor feel what their face shows (Barrett et al., 2019)."
    ),
    (
        "Emotion recognition in workplaces or education, which the EU AI Act prohibits (Art. 5(1)(f)) except for "
        "medical or safety reasons, and any covert or non-consensual monitoring."
    ),
]
LIMITATIONS = [
    (
        "FER2013 (Goodfellow et al., 2013) was collected by web image search with emotion keywords: 48x48 grey, "
        "often posed or exaggerated expressions, watermarks and non-face images, and noisy labels (human accuracy"
        " was estimated at about 65 +- 5 %)."
    ),
    (
        "The demographics of FER2013 are undocumented; accuracy is unknown and probably uneven across age, "
        "gender, skin tone and culture. Children, elderly people and non-Western expression norms are likely "
        "under-represented."
    ),
    (
        "Classes are imbalanced (disgust is about 1.5 % of the training faces); rare classes are recognised "
        "poorly, see the per-class recall."
    ),
    (
        "Seven basic-emotion categories are a simplification: mixed, subtle or culturally specific expressions "
        "are forced into one of them, and 'neutral' absorbs much of real-world footage."
    ),
    (
        "Accuracy drops on faces that are non-frontal, occluded (masks, glasses, hands), small, blurred, badly "
        "lit, or detected imprecisely by the edge's face detector."
    ),
    (
        "Retrained versions learn from faces labelled by our own annotators: their judgements and the people who "
        "happen to be in front of our cameras shape the model."
    ),
]
PRETRAINED_NOTES = [
    (
        "Weights: Arriaga et al. (2017), fer2013_mini_XCEPTION.102-0.66, trained on the first 80 % of fer2013.csv"
        " (the 28,709 Training faces) with batch 32, Adam, ImageDataGenerator augmentation (rotation 10 deg, "
        "shifts 10 %, zoom 10 %, horizontal flip)."
    ),
    (
        "Its checkpoint (epoch 102, val accuracy 0.66) was chosen on the last 20 % of fer2013.csv, i.e. "
        "PublicTest + PrivateTest. PublicTest is the FER2013 validation set evaluated here, so this top-1 is "
        "slightly optimistic: not trained on, but used for model selection."
    ),
]

LabelledFaces = tuple[np.ndarray, np.ndarray]


class ModelCardFiles(NamedTuple):
    """Paths written by ``write_model_card``; a figure is None when there was nothing to draw."""

    json: Path
    confusion: Path | None
    learning_curves: Path | None

    @property
    def paths(self) -> list[Path]:
        return [path for path in self if path is not None]


@dataclass(frozen=True)
class SetEvaluation:
    """One evaluation set's result for the card."""

    samples: int
    top1: float | None
    confusion: list[list[int]]  # rows true, columns predicted, EMOTIONS order
    current_top1: float | None = None  # the model it was gated against, when there was a gate

    def to_json(self) -> dict[str, Any]:
        matrix = np.asarray(self.confusion, dtype=np.int64).reshape(NUM_EMOTIONS, NUM_EMOTIONS)
        support = matrix.sum(axis=1)
        predicted = matrix.sum(axis=0)
        recall = {
            emotion: (float(matrix[index, index] / support[index]) if support[index] else None)
            for index, emotion in enumerate(EMOTIONS)
        }
        precision = {
            emotion: (float(matrix[index, index] / predicted[index]) if predicted[index] else None)
            for index, emotion in enumerate(EMOTIONS)
        }
        record: dict[str, Any] = {
            "samples": self.samples,
            "top1": self.top1,
            "per_class_recall": recall,
            "per_class_precision": precision,
            "per_class_support": {emotion: int(count) for emotion, count in zip(EMOTIONS, support)},
            "confusion": matrix.tolist(),
        }
        if self.current_top1 is not None:
            record["current_model_top1"] = self.current_top1
        return record


def write_model_card(
    directory: Path,
    entry: ModelEntry,
    *,
    decision: GateDecision | None = None,
    history: Mapping[str, Sequence[float]] | None = None,
    class_counts: Mapping[str, int] | None = None,
    training: Mapping[str, Any] | None = None,
    evaluation_sets: Mapping[str, LabelledFaces] | None = None,
    tflite_path: Path | None = None,
    notes: Sequence[str] = (),
) -> ModelCardFiles:
    """Write the model card of a registered version into ``directory``.

    # Arguments
        directory: Where to write (created if needed); one directory per version.
        entry: The version's registry entry (``register_version``'s result).
        decision: The ``models.gate.GateDecision`` that judged this model; its
            scores and confusion matrices become the card's evaluation, its
            paired tests (per set: b, c, mid-p, interval) the card's ``gate``.
            None for an ungated model: then ``evaluation_sets`` are evaluated.
        history: ``TrainingRun.history`` (per-epoch lists); drawn as learning curves.
        class_counts: Training faces per emotion name (missing classes count 0).
        training: ``TrainingRun.summary()`` (settings, epochs run, stop reason, speed).
        evaluation_sets: ``{name: (faces, labels)}`` to evaluate when ``decision`` is None.
        tflite_path: The version's TFLite file, needed with ``evaluation_sets``;
            its sha256 must be the entry's.
        notes: Extra provenance or caveats for this version.

    # Returns
        ``ModelCardFiles(json, confusion, learning_curves)``; ``.paths`` lists
        the files written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    evaluation = _evaluation(entry, decision, evaluation_sets, tflite_path)
    card = build_card(entry, decision, history, class_counts, training, evaluation, notes)

    confusion_path = None
    if evaluation:
        confusion_path = directory / CONFUSION_FILENAME
        plot_confusion(evaluation, f"{entry.name} {entry.version}", confusion_path)
    curves_path = None
    if history and any(history.values()):
        curves_path = directory / LEARNING_CURVES_FILENAME
        plot_learning_curves(history, f"{entry.name} {entry.version}", curves_path)
    card["figures"] = {
        "confusion": confusion_path.name if confusion_path else None,
        "learning_curves": curves_path.name if curves_path else None,
    }
    json_path = directory / JSON_FILENAME
    _write_text_atomically(json_path, json.dumps(card, indent=2, allow_nan=False) + "\n")
    logger.info("Wrote the model card of %s %s in %s", entry.name, entry.version, directory)
    return ModelCardFiles(json_path, confusion_path, curves_path)


# -- content ----------------------------------------------------------------------------------


def _evaluation(
    entry: ModelEntry,
    decision: GateDecision | None,
    evaluation_sets: Mapping[str, LabelledFaces] | None,
    tflite_path: Path | None,
) -> dict[str, SetEvaluation]:
    if decision is not None:
        return evaluation_from_decision(decision)
    if not evaluation_sets:
        return {}
    if tflite_path is None:
        raise ValueError("evaluation_sets need tflite_path (the version's TFLite file) to evaluate")
    actual = sha256_file(tflite_path)
    if actual != entry.files["tflite"].sha256:
        raise ValueError(f"{tflite_path} has sha256 {actual}, not the one registered for {entry.version}")
    return evaluate_for_card(Path(tflite_path), evaluation_sets)


def evaluation_from_decision(decision: GateDecision) -> dict[str, SetEvaluation]:
    """The candidate's results per set, as the gate measured them."""
    return {
        name: SetEvaluation(
            samples=decision.counts[name],
            top1=pair["candidate"],
            confusion=decision.confusion[name],
            current_top1=pair["current"],
        )
        for name, pair in decision.scores.items()
    }


def evaluate_for_card(tflite_path: Path, evaluation_sets: Mapping[str, LabelledFaces]) -> dict[str, SetEvaluation]:
    """Top-1 and confusion matrix of one TFLite file on each set (imports TensorFlow via models.convert)."""
    from models.convert import evaluate_tflite
    from models.gate import confusion_matrix
    from models.training import check_labelled_faces, model_inputs

    results = {}
    for name, (faces, labels) in evaluation_sets.items():
        check_labelled_faces(f"evaluation set {name!r}", faces, labels)
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) == 0:
            results[name] = SetEvaluation(0, None, confusion_matrix(labels, labels).tolist())
            continue
        result = evaluate_tflite(tflite_path, model_inputs(faces), labels)
        matrix = confusion_matrix(labels, result.predicted_classes).tolist()
        results[name] = SetEvaluation(len(labels), result.top1, matrix)
    return results


def build_card(
    entry: ModelEntry,
    decision: GateDecision | None,
    history: Mapping[str, Sequence[float]] | None,
    class_counts: Mapping[str, int] | None,
    training: Mapping[str, Any] | None,
    evaluation: Mapping[str, SetEvaluation],
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The card's JSON content (without the figure names)."""
    return _json_safe(
        {
            "model_card_schema": CARD_SCHEMA_VERSION,
            "name": entry.name,
            "version": entry.version,
            "parent": entry.parent,
            "created_at": entry.created_at.isoformat(),
            "card_generated_at": datetime.now(timezone.utc).isoformat(),
            "source": entry.source,
            "labels": list(EMOTIONS),
            "input": entry.input.model_dump(mode="json"),
            "files": {kind: record.model_dump(mode="json") for kind, record in entry.files.items()},
            "tflite_sha256": entry.files["tflite"].sha256 if "tflite" in entry.files else None,
            "data_counts": dict(entry.data_counts),
            "class_balance": class_balance(class_counts),
            "training": dict(training) if training is not None else None,
            "history_summary": summarize_history(history),
            "metrics": dict(entry.metrics),
            "evaluation": {name: result.to_json() for name, result in evaluation.items()},
            "decision": _decision_word(decision),
            "gate": _gate_record(decision, entry),
            "intended_use": INTENDED_USE,
            "out_of_scope_uses": OUT_OF_SCOPE_USES,
            "limitations": LIMITATIONS,
            "notes": list(notes),
        }
    )


def _decision_word(decision: GateDecision | None) -> str:
    """"promoted", "refused" or "undecided" (too few gate faces to decide: ``gate.reasons`` says what is missing)."""
    if decision is None:
        return "not gated (evaluation only)"
    return decision.outcome


def _gate_record(decision: GateDecision | None, entry: ModelEntry) -> dict[str, Any] | None:
    if decision is None:
        return None
    record = decision.to_json()
    # The gate may have judged a temporary export; say whether it is byte-identical to the registered file.
    record["evaluated_registered_file"] = record.get("candidate_sha256") == entry.files["tflite"].sha256
    return record


def class_balance(class_counts: Mapping[str, int] | None) -> dict[str, Any] | None:
    """Counts and fractions per emotion (all seven, zero when absent); None without counts."""
    if class_counts is None:
        return None
    unknown = set(class_counts) - set(EMOTIONS)
    if unknown:
        raise ValueError(f"class_counts has names outside EMOTIONS: {sorted(unknown)}")
    counts = {emotion: int(class_counts.get(emotion, 0)) for emotion in EMOTIONS}
    total = sum(counts.values())
    fractions = {emotion: (count / total if total else None) for emotion, count in counts.items()}
    described = "labelled faces per class given for this version"
    return {"of": described, "total": total, "counts": counts, "fractions": fractions}


def summarize_history(history: Mapping[str, Sequence[float]] | None) -> dict[str, Any] | None:
    """Epoch count, the last epoch's values and the best (lowest val_loss) epoch's values."""
    if not history or not history.get("loss"):
        return None
    epochs = len(history["loss"])
    final = {key: values[-1] for key, values in history.items() if len(values) == epochs}
    summary: dict[str, Any] = {"epochs": epochs, "final": final}
    validation_loss = history.get("val_loss")
    if validation_loss:
        best = int(np.nanargmin(np.asarray(validation_loss, dtype=np.float64)))
        at_best = {key: values[best] for key, values in history.items() if len(values) == epochs}
        summary["best"] = {"epoch": best + 1, **at_best}
    summary["note"] = (
        "Training loss and accuracy are measured on augmented faces while the weights change, and the loss "
        "includes the L2 weight penalty; validation values are plain cross-entropy and top-1 after each epoch."
    )
    return summary


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones, so the file is strict JSON."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- figures ----------------------------------------------------------------------------------


def plot_confusion(evaluation: Mapping[str, SetEvaluation], title: str, path: Path) -> Path:
    """One confusion-matrix panel per evaluation set: colour = share of the true class, text = count."""
    shown = {name: result for name, result in evaluation.items() if result.samples > 0}
    panels = max(len(shown), 1)
    figure, axes = plt.subplots(1, panels, figsize=(max(6.4, 5.4 * panels), 5.6), squeeze=False)
    if not shown:
        axes[0][0].axis("off")
        axes[0][0].text(0.5, 0.5, "no evaluation faces", ha="center", va="center")
    for axis, (name, result) in zip(axes[0], shown.items()):
        _confusion_panel(axis, name, result)
    caption = "rows: true class, columns: predicted, colour: share of the row"
    figure.suptitle(f"{title}: confusion matrix\n{caption}", fontsize=10)
    figure.tight_layout()
    _save_figure(figure, path)
    return path


def _confusion_panel(axis: plt.Axes, name: str, result: SetEvaluation) -> None:
    counts = np.asarray(result.confusion, dtype=np.int64)
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=np.float64), where=row_totals > 0)
    axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(NUM_EMOTIONS):
        for column in range(NUM_EMOTIONS):
            colour = "white" if shares[row, column] > 0.6 else "black"
            axis.text(column, row, str(counts[row, column]), ha="center", va="center", fontsize=8, color=colour)
    axis.set_xticks(range(NUM_EMOTIONS), EMOTIONS, rotation=45, ha="right")
    axis.set_yticks(range(NUM_EMOTIONS), EMOTIONS)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    top1 = f"{result.top1:.1%}" if result.top1 is not None else "n/a"
    axis.set_title(f"{name}: top-1 {top1} (n={result.samples})")


def plot_learning_curves(history: Mapping[str, Sequence[float]], title: str, path: Path) -> Path:
    """Loss and accuracy per epoch, training and every validation set; the best epoch is marked."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, metric in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
        for key, label in _curve_keys(history, metric):
            axis.plot(epochs, history[key], marker="o", markersize=3, label=label)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        axis.set_xlim(0.5, len(epochs) + 0.5)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if history.get("val_loss"):
        best_epoch = int(np.nanargmin(np.asarray(history["val_loss"], dtype=np.float64))) + 1
        for axis in (loss_axis, accuracy_axis):
            axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
    figure.suptitle(f"{title}: learning curves (dashed: epoch kept)")
    figure.tight_layout()
    _save_figure(figure, path)
    return path


def _curve_keys(history: Mapping[str, Sequence[float]], metric: str) -> list[tuple[str, str]]:
    """(history key, legend label) for the training curve and each validation set's curve."""
    keys = [(metric, f"train {metric} (augmented)")] if history.get(metric) else []
    per_set = [
        key for key in history if key.startswith("val_") and key.endswith(f"_{metric}") and key != f"val_{metric}"
    ]
    if per_set:
        keys += [(key, key[len("val_") : -len(f"_{metric}")]) for key in per_set]
    elif history.get(f"val_{metric}"):
        keys.append((f"val_{metric}", "validation"))
    return keys


def _save_figure(figure: plt.Figure, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
    os.replace(temporary, path)


def _write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


# -- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Write the (ungated, evaluation-only) card of a registered version, evaluated on FER2013 x_val."""
    parser = argparse.ArgumentParser(prog="python -m models.card", description=main.__doc__)
    parser.add_argument("version", nargs="?", default=None, help="registered version (default: current)")
    parser.add_argument("--npz", type=Path, required=True, help="FER2013 npz (x_train, y_train, x_val, y_val)")
    parser.add_argument("--output", type=Path, required=True, help="directory for the card files")
    parser.add_argument(
        "--store", type=Path, default=None, help="model store (default: $EMQ_MODEL_STORE or models/store)"
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    registry = ModelRegistry(arguments.store if arguments.store is not None else default_store())
    entry = registry.get(arguments.version) if arguments.version else registry.current()
    if entry is None:
        raise SystemExit(f"no current model in {registry.store}")
    registry.verify(entry)
    with np.load(arguments.npz) as data:
        validation = {"fer2013_val": (data["x_val"], data["y_val"].astype(np.int64))}
        histogram = np.bincount(data["y_train"], minlength=NUM_EMOTIONS)
        training_classes = {emotion: int(count) for emotion, count in zip(EMOTIONS, histogram)}
    pretrained = entry.version == PRETRAINED_VERSION and entry.parent is None
    files = write_model_card(
        arguments.output,
        entry,
        decision=None,
        class_counts=training_classes if pretrained else None,
        evaluation_sets=validation,
        tflite_path=registry.path_of(entry, "tflite"),
        notes=PRETRAINED_NOTES if pretrained else (),
    )
    for path in files.paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
