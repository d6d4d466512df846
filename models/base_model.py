"""A better shipped base model: train on FER2013 *Training* only, report on *PublicTest*, ship through the gate.

    emq-model train-base --npz ../shared/data/fer2013_trainval.npz [--from-scratch] [--epochs 20]
        [--time-budget-s 3600] [--target-accuracy 0.7] [--checkpoint-dir var/train-base] [--no-register]

1. Split ``x_train`` (FER2013 Training) by one seeded permutation into the
   faces to train on and a *selection* split (10 %) that steers early stopping
   and the target.  PublicTest (``x_val``) is never used to choose anything:
   it stays an honest report.
2. Fine-tune the current default (the registry's ``model.keras``) or train a
   new model (``--from-scratch``) with the recipe: label smoothing, random
   erasing, optional mixup, flip/rotate/zoom warps, a cosine schedule after a
   warm-up.  The run stops on its own at ``--epochs``, ``--time-budget-s``
   (counted over every attempt of the run) or ``--target-accuracy`` (on the
   selection split); killed, it resumes from ``--checkpoint-dir``; once
   trained, a re-run goes straight to the evaluation.  Fine-tuning keeps the last epoch
   (``--keep-last``): the shipped model was trained on all of FER2013 Training
   (Arriaga's split was the first 80 % of fer2013.csv, which is Training), so
   its selection loss is that of faces it has seen and cannot pick an epoch.
3. Export TFLite; report PublicTest top-1 without and with flip test-time
   augmentation, the parameter count and ms per face on one core (LiteRT).
4. Gate: the candidate must be *significantly better* than the current default
   on the FER2013 gate faces (the part of PublicTest the retraining gate uses,
   :func:`models.dataset.base_rows`; paired McNemar mid-p, :mod:`models.gate`),
   and within the edge's budget (parameters, ms per face).  Only then is it
   registered, made current, and its model card written.

The summary (JSON) is printed and kept in the checkpoint folder.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.dataset import base_rows
from models.gate import GateDecision, GateRule, compare_deployment, confusion_matrix
from models.paired import PairedCounts
from runtime.registry import ModelRegistry, parse_version, sha256_file

logger = logging.getLogger(__name__)

SELECTION_SET = "selection"
GATE_SET = "fer2013"
# The retraining job's FER2013 selection size (DatasetConfig.base_selection_samples): the base gate
# uses the same gate faces, the rest of PublicTest after that cut.
GATE_SELECTION_CUT = 1000
MAX_PARAMETERS = 60_000
MAX_MS_PER_FACE = 1.0
TRAINED_MODEL = "trained.keras"
TRAINED_RUN = "trained-run.json"
SPENT_FILE = "budget-spent.json"
PROGRESS_LOG = "progress.log"
SUMMARY_FILE = "summary.json"
CANDIDATE_TFLITE = "candidate.tflite"
LEARNING_CURVES_FILE = "learning-curves.png"


@dataclass(frozen=True)
class BaseRunOptions:
    """Everything but the training recipe (``TrainingSettings``)."""

    npz: Path
    checkpoint_dir: Path
    selection_fraction: float = 0.1
    split_seed: int = 0
    train_limit: int | None = None  # train on at most this many faces (tests, quick looks)
    evaluation_limit: int | None = None  # PublicTest faces to report on (tests); None: all 3,589
    register: bool = True
    store: Path | None = None
    version: str | None = None  # None: the next major version ("2.0.0" after "1.x")
    card_dir: Path = Path("docs/model-cards")
    card_markdown_dir: Path = Path("docs")
    latency_repeats: int = 300
    max_parameters: int = MAX_PARAMETERS  # the edge's budget (issue #12)
    max_ms_per_face: float = MAX_MS_PER_FACE  # on one core through LiteRT, batch 1
    rule: GateRule = field(default_factory=GateRule)
    # The distillation teacher: a .keras path, "current" (the registry's default), or None (the
    # model being fine-tuned). A teacher trained on all of FER2013 Training has seen the selection
    # split too, but PublicTest, the report, stays unseen by teacher and student alike.
    teacher: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.selection_fraction < 0.5:
            raise ValueError(f"selection_fraction must be in (0, 0.5), got {self.selection_fraction}")


# -- the split ---------------------------------------------------------------------------------


def selection_split(train_count: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x_train`` to train on and rows for selection: one seeded permutation, cut once.

    Both index FER2013 *Training* only, so selection is disjoint from PublicTest by construction.
    """
    rows = np.random.default_rng(seed).permutation(train_count)
    selection_count = max(1, round(train_count * fraction))
    return np.sort(rows[selection_count:]), np.sort(rows[:selection_count])


def _sample(rows: np.ndarray, count: int) -> np.ndarray:
    return np.sort(np.random.default_rng(1).permutation(rows)[:count])


@dataclass(frozen=True)
class Fer2013Parts:
    train: tuple[np.ndarray, np.ndarray]
    selection: tuple[np.ndarray, np.ndarray]
    public_test: tuple[np.ndarray, np.ndarray]  # all of x_val (or the first evaluation_limit faces)
    gate: tuple[np.ndarray, np.ndarray]  # the retraining gate's FER2013 faces (rows of x_val)

    def counts(self) -> dict[str, int]:
        return {"fer2013_train": len(self.train[1]), "fer2013_selection": len(self.selection[1]),
                "fer2013_public_test": len(self.public_test[1]), "fer2013_gate": len(self.gate[1])}


def load_parts(options: BaseRunOptions) -> Fer2013Parts:
    """FER2013 cut into training, selection (both from Training), PublicTest and the gate faces (from PublicTest)."""
    with np.load(options.npz) as arrays:
        x_train, y_train = arrays["x_train"], arrays["y_train"].astype(np.int64)
        x_val, y_val = arrays["x_val"], arrays["y_val"].astype(np.int64)
    train_rows, selection_rows = selection_split(len(y_train), options.selection_fraction, options.split_seed)
    test_rows = np.arange(len(y_val))
    _, _, gate_rows = base_rows(len(y_train), len(y_val), 0, min(GATE_SELECTION_CUT, len(y_val) // 3), None)
    # The npz is ordered by class: a limit takes a seeded sample of each part, never its first rows.
    if options.train_limit is not None:
        train_rows = _sample(train_rows, options.train_limit)
        selection_rows = _sample(selection_rows, max(options.train_limit // 4, 1))
    if options.evaluation_limit is not None:
        test_rows, gate_rows = _sample(test_rows, options.evaluation_limit), _sample(gate_rows, options.evaluation_limit)
    return Fer2013Parts(
        train=(x_train[train_rows], y_train[train_rows]), selection=(x_train[selection_rows], y_train[selection_rows]),
        public_test=(x_val[test_rows], y_val[test_rows]), gate=(x_val[gate_rows], y_val[gate_rows]),
    )


# -- progress, budget and resume ---------------------------------------------------------------


class RunLog:
    """Progress lines to stderr and to ``progress.log``; the seconds spent, kept across attempts."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / PROGRESS_LOG
        self.spent_path = directory / SPENT_FILE
        self.spent_before = self.spent_seconds()
        self.started = time.monotonic()

    def spent_seconds(self) -> float:
        if not self.spent_path.exists():
            return 0.0
        return float(json.loads(self.spent_path.read_text())["seconds"])

    def __call__(self, line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        print(stamped, file=sys.stderr, flush=True)
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(stamped + "\n")
        self.save_spent()

    def save_spent(self) -> None:
        seconds = self.spent_before + time.monotonic() - self.started
        self.spent_path.write_text(json.dumps({"seconds": round(seconds, 1)}))

    def remaining(self, budget_s: float | None) -> float | None:
        """What is left of the budget after earlier attempts (at least one second, so train() accepts it)."""
        return None if budget_s is None else max(budget_s - self.spent_before, 1.0)


# -- the run -----------------------------------------------------------------------------------


def run_base_training(settings: Any, options: BaseRunOptions) -> dict[str, Any]:
    """Train (or resume), evaluate, gate and, if promoted, register; returns the JSON summary.

    ``settings`` is a ``models.training.TrainingSettings``; its ``checkpoint_dir``
    and ``time_budget_s`` are replaced by the run's (the budget left after
    earlier attempts).
    """
    from dataclasses import replace

    log = RunLog(options.checkpoint_dir)
    parts = load_parts(options)
    registry = ModelRegistry(options.store)
    current = registry.current()
    if current is None and not settings.from_scratch:
        raise LookupError(f"no current model in {registry.store} to fine-tune: run emq-model import-pretrained")
    settings = replace(settings, checkpoint_dir=options.checkpoint_dir / "resume",
                       time_budget_s=log.remaining(settings.time_budget_s))
    log(f"train-base: {parts.counts()}; selection from FER2013 Training only (seed {options.split_seed})")
    model, run_summary, history = trained_model(settings, options, parts, registry, current, log)
    summary = evaluate_candidate(model, options, parts, registry, current, log)
    summary.update(training=run_summary, learning_curve=learning_curve(history), data_counts=parts.counts(),
                   learning_curves_png=str(plot_run_curves(history, options.checkpoint_dir, settings.from_scratch)))
    decision = base_gate(Path(summary["candidate_tflite"]), registry, current, parts.gate, options.rule, summary,
                         options.max_parameters, options.max_ms_per_face)
    summary["gate"] = decision.to_json()
    summary["registered"] = None
    if decision.promote and options.register:
        summary["registered"] = register_candidate(model, options, parts, registry, current, decision, summary, history)
    _write_summary(options.checkpoint_dir / SUMMARY_FILE, summary)
    log(f"train-base: gate {decision.outcome} ({decision.reasons[-1]}); summary {options.checkpoint_dir / SUMMARY_FILE}")
    return summary


def trained_model(settings: Any, options: BaseRunOptions, parts: Fer2013Parts, registry: ModelRegistry,
                  current: Any, log: RunLog) -> tuple[Any, dict[str, Any], dict[str, list[float]]]:
    """The trained model: from an earlier, finished attempt if there is one, else by training now."""
    import keras

    from models.training import TrainingData, train

    saved, saved_run = options.checkpoint_dir / TRAINED_MODEL, options.checkpoint_dir / TRAINED_RUN
    if saved.exists() and saved_run.exists():
        log(f"train-base: training already finished in {saved}; evaluating it")
        record = json.loads(saved_run.read_text())
        return keras.models.load_model(saved, compile=False), record["summary"], record["history"]
    start_from = None if settings.from_scratch else registry.path_of(current, "keras")
    if start_from is not None:
        _log_starting_point(start_from, parts, log)
    data = TrainingData(parts.train[0], parts.train[1], validation={SELECTION_SET: parts.selection})
    teacher = teacher_path(options.teacher, settings, registry, current)  # checked before anything is trained
    run = train(data, settings, start_from=start_from, progress=log, teacher=teacher)
    summary = run.summary()
    summary["seconds_all_attempts"] = round(log.spent_seconds(), 1)
    run.model.save(saved)
    saved_run.write_text(json.dumps({"summary": summary, "history": run.history}, indent=2))
    return run.model, summary, run.history


def teacher_path(teacher: str | None, settings: Any, registry: ModelRegistry, current: Any) -> Path | None:
    """The distillation teacher's .keras file ("current": the registry's default), checked before training starts."""
    if settings.distillation <= 0:
        return None
    if teacher is None:
        if settings.from_scratch:
            raise ValueError("--distillation with --from-scratch needs a --teacher (a .keras file or 'current')")
        return None  # fine-tuning: the starting model teaches
    if teacher == "current":
        if current is None:
            raise LookupError(f"--teacher current: no current model in {registry.store}")
        return registry.path_of(current, "keras")
    if not Path(teacher).is_file():
        raise FileNotFoundError(f"--teacher {teacher} does not exist")
    return Path(teacher)


def _log_starting_point(start_from: Path, parts: Fer2013Parts, log: RunLog) -> None:
    """Selection accuracy before training (epoch 0). The pretrained model trained on all of FER2013
    Training, selection faces included, so this number is optimistic; PublicTest is the fair one."""
    import keras

    from models.training import loss_and_accuracy, model_inputs

    model = keras.models.load_model(start_from, compile=False)
    loss, accuracy = loss_and_accuracy(model, model_inputs(parts.selection[0]), parts.selection[1])
    log(f"epoch 0 (starting point {start_from}): selection loss {loss:.4f} accuracy {accuracy:.4f}")


def evaluate_candidate(model: Any, options: BaseRunOptions, parts: Fer2013Parts, registry: ModelRegistry,
                       current: Any, log: RunLog) -> dict[str, Any]:
    """TFLite export, PublicTest top-1 without and with flip TTA (both models), parameters, ms per face."""
    from models.benchmark import measure_latency
    from models.convert import evaluate_tflite_with_flip, export_tflite
    from models.training import model_inputs
    from runtime.tflite_runner import TFLiteEmotionModel

    tflite = export_tflite(model, options.checkpoint_dir / CANDIDATE_TFLITE)
    faces, labels = model_inputs(parts.public_test[0]), parts.public_test[1]
    plain, flipped = evaluate_tflite_with_flip(tflite, faces, labels)
    latency = measure_latency(TFLiteEmotionModel(tflite, num_threads=1), batch_size=1, repeats=options.latency_repeats)
    summary: dict[str, Any] = {
        "candidate_tflite": str(tflite),
        "candidate_sha256": sha256_file(tflite),
        "parameters": int(model.count_params()),
        "ms_per_face_one_core": round(latency.per_face_ms, 4),
        "public_test": {"faces": int(len(labels)), "top1": plain.top1, "top1_flip_tta": flipped.top1},
    }
    if current is not None:
        current_plain, current_flipped = evaluate_tflite_with_flip(registry.path_of(current, "tflite"), faces, labels)
        summary["current"] = {"version": current.version, "top1": current_plain.top1, "top1_flip_tta": current_flipped.top1}
    log(f"train-base: PublicTest ({len(labels)} faces) top-1 {plain.top1:.4f}, with flip TTA {flipped.top1:.4f}"
        f"{_current_text(summary)}; {summary['parameters']} parameters, {latency.per_face_ms:.3f} ms/face on one core")
    return summary


def _current_text(summary: dict[str, Any]) -> str:
    current = summary.get("current")
    if current is None:
        return ""
    return f" (current {current['version']}: {current['top1']:.4f}, flip TTA {current['top1_flip_tta']:.4f})"


def plot_run_curves(history: dict[str, list[float]], directory: Path, from_scratch: bool) -> Path:
    """The run's loss and accuracy per epoch as a picture beside its summary (whatever the gate says)."""
    from models.card import plot_learning_curves

    title = "train-base " + ("from scratch" if from_scratch else "fine-tuning")
    return plot_learning_curves(history, title, directory / LEARNING_CURVES_FILE)


def learning_curve(history: dict[str, list[float]]) -> list[dict[str, float]]:
    """Per epoch: training loss/accuracy and the selection split's loss/accuracy."""
    keys = {"loss": "loss", "accuracy": "accuracy", f"val_{SELECTION_SET}_loss": "selection_loss",
            f"val_{SELECTION_SET}_accuracy": "selection_accuracy"}
    epochs = len(history.get("loss", []))
    return [{name: round(history[key][epoch], 4) for key, name in keys.items() if key in history and epoch < len(history[key])}
            for epoch in range(epochs)]


# -- the gate ----------------------------------------------------------------------------------


def base_gate(candidate_tflite: Path, registry: ModelRegistry, current: Any, gate_faces: tuple[np.ndarray, np.ndarray],
              rule: GateRule, summary: dict[str, Any], max_parameters: int = MAX_PARAMETERS,
              max_ms_per_face: float = MAX_MS_PER_FACE) -> GateDecision:
    """A base model replaces the default only if significantly better on the FER2013 gate faces
    (McNemar mid-p < alpha, :func:`models.gate.compare_deployment`) and within the edge's budget."""
    from models.convert import evaluate_tflite
    from models.training import model_inputs

    faces, labels = model_inputs(gate_faces[0]), gate_faces[1]
    candidate = evaluate_tflite(candidate_tflite, faces, labels).predicted_classes
    if current is None:
        current_classes = np.full_like(labels, -1)  # nothing to beat: every face counts as the candidate's win
        current_sha256 = ""
    else:
        current_path = registry.path_of(current, "tflite")
        current_classes = evaluate_tflite(current_path, faces, labels).predicted_classes
        current_sha256 = sha256_file(current_path)
    comparison = compare_deployment(GATE_SET, PairedCounts.of(labels, candidate, current_classes), rule)
    outcome, verdict = _base_verdict(comparison, summary, max_parameters, max_ms_per_face)
    return GateDecision(
        outcome=outcome, comparisons={GATE_SET: comparison}, reasons=[comparison.reason, verdict], rule=rule,
        confusion={GATE_SET: confusion_matrix(labels, candidate).tolist()},
        candidate_sha256=sha256_file(candidate_tflite), current_sha256=current_sha256,
    )


def _base_verdict(comparison: Any, summary: dict[str, Any], max_parameters: int, max_ms_per_face: float) -> tuple[str, str]:
    if summary["parameters"] > max_parameters:
        return "refused", f"refused: {summary['parameters']} parameters, more than {max_parameters}"
    if summary["ms_per_face_one_core"] > max_ms_per_face:
        return "refused", f"refused: {summary['ms_per_face_one_core']} ms per face on one core, more than {max_ms_per_face}"
    if not comparison.decides:
        return "undecided", f"undecided: {comparison.reason}"
    if not comparison.passed:
        return "refused", f"refused: not shown to be better than the current default on {GATE_SET}"
    return "promoted", f"promoted: significantly better than the current default on {GATE_SET}, within the edge's budget"


# -- registering -------------------------------------------------------------------------------


def default_version(registry: ModelRegistry) -> str:
    """A new base model is a major version: "2.0.0" after any 1.x (retraining bumps the minor)."""
    versions = registry.versions()
    if not versions:
        return "1.0.0"
    major, _, _ = parse_version(versions[-1])
    return f"{major + 1}.0.0"


def register_candidate(model: Any, options: BaseRunOptions, parts: Fer2013Parts, registry: ModelRegistry, current: Any,
                       decision: GateDecision, summary: dict[str, Any], history: dict[str, list[float]]) -> dict[str, Any]:
    """Register the promoted candidate as current and write its model card (JSON, figures, markdown)."""
    from models.card import write_model_card
    from models.training import class_counts
    from models.versions import register_version

    version = options.version or default_version(registry)
    origin = "trained from scratch" if summary["training"]["settings"]["from_scratch"] else f"fine-tuned from {current.version}"
    metrics = {"fer2013_val_top1": summary["public_test"]["top1"], "fer2013_val_top1_flip_tta": summary["public_test"]["top1_flip_tta"],
               "fer2013_gate_top1": decision.scores[GATE_SET]["candidate"], "parameters": summary["parameters"],
               "ms_per_face_one_core": summary["ms_per_face_one_core"]}
    entry = register_version(
        registry, model, version=version, parent=None if current is None else current.version, metrics=metrics,
        data_counts=parts.counts(), tflite_path=Path(summary["candidate_tflite"]), make_current=True,
        source=f"base model {origin} on FER2013 Training (emq-model train-base)",
    )
    notes = [f"PublicTest ({summary['public_test']['faces']} faces): top-1 {summary['public_test']['top1']:.4f}, "
             f"with flip test-time augmentation {summary['public_test']['top1_flip_tta']:.4f}",
             "Selection (early stopping, target) on 10 % of FER2013 Training; PublicTest chose nothing."]
    card = write_model_card(options.card_dir / version, entry, decision=decision, history=history,
                            class_counts=class_counts(parts.train[1]), training=summary["training"], notes=notes)
    markdown = options.card_markdown_dir / f"model-card-{version}.md"
    markdown.write_text(card_markdown(version, summary, decision))
    return {"version": version, "store": str(registry.store), "card": [str(path) for path in card.paths], "markdown": str(markdown)}


def card_markdown(version: str, summary: dict[str, Any], decision: GateDecision) -> str:
    """The human-readable model card (the JSON beside it has everything)."""
    test, current = summary["public_test"], summary.get("current") or {}
    gate = decision.comparisons[GATE_SET]
    settings = summary["training"]["settings"]
    curve = "\n".join(f"| {index + 1} | {point.get('accuracy', float('nan')):.4f} | {point.get('selection_accuracy', float('nan')):.4f} |"
                      for index, point in enumerate(summary["learning_curve"]))
    return f"""# Model card: `mini_xception_fer2013` {version} (base model)

Machine-readable card and figures: [`model-cards/{version}/`](model-cards/{version}/) (written by `emq-model train-base`).

## How it was made

{'From scratch' if settings['from_scratch'] else 'Fine-tuned from ' + str(current.get('version'))} on FER2013 *Training* minus a seeded
10 % selection split ({summary['data_counts']['fer2013_train']} faces to train, {summary['data_counts']['fer2013_selection']} to select);
label smoothing {settings['label_smoothing']}, random erasing {settings['random_erasing']}, mixup {settings['mixup_alpha']},
flip/rotate/shift/zoom warps, Adam {settings['learning_rate']} with a {settings['schedule']} schedule
({settings['warmup_epochs']} warm-up epoch(s)), batch {settings['batch_size']}, up to {settings['epochs']} epochs;
stopped by {summary['training']['stopped_reason']} after {summary['training']['epochs_run']} epoch(s), kept epoch
{summary['training']['best_epoch']}. PublicTest chose nothing (not early stopping, not the target).

## Results

| | {version} | {current.get('version', '-')} (previous default) |
|---|---:|---:|
| PublicTest top-1 ({test['faces']} faces) | **{test['top1']:.2%}** | {current.get('top1', float('nan')):.2%} |
| PublicTest top-1, flip test-time augmentation | {test['top1_flip_tta']:.2%} | {current.get('top1_flip_tta', float('nan')):.2%} |
| FER2013 gate faces ({gate.faces}, part of PublicTest) | {gate.candidate_top1:.2%} | {gate.current_top1:.2%} |

Parameters {summary['parameters']}; {summary['ms_per_face_one_core']:.3f} ms per face on one core (LiteRT, batch 1).

Gate: {decision.reasons[0]}. {decision.reasons[-1]}.

## Learning curve (training accuracy is on augmented faces)

| epoch | training accuracy | selection accuracy |
|---:|---:|---:|
{curve}

![Confusion matrix](model-cards/{version}/confusion.png)
![Learning curves](model-cards/{version}/learning-curves.png)

## Read this before trusting it

- FER2013 carries its own biases (web-scraped faces, skewed demographics, few *disgust* examples); this
  model is for aggregate emotion statistics, not for decisions about individual people.
- The gate faces are part of PublicTest, so the PublicTest figure and the gate are not independent.
"""


def _write_summary(path: Path, summary: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    temporary.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

