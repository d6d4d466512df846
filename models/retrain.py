"""The retraining job: collected crops + human labels → fine-tuned Mini-Xception → gate → release.

    emq-retrain [--config retrain.toml] [--epochs 5] [--time-budget 900] [--no-release]
    emq-retrain import FOLDER | --csv FILE [--source TAG]     (labelled faces from outside: models.face_import)
    emq-retrain release VERSION                               (send a registered version to the edges again)

1. Build the dataset from the cloud store (:mod:`models.dataset`): human labels
   first, optionally confident model labels (for training only); near-duplicates
   dropped; split by device and time into three disjoint parts: training,
   selection (early stopping) and the gate.
2. Optionally mix in a base dataset (FER2013 npz), cut the same way: its
   training split for training, its validation split into a selection part and
   a disjoint gate part, so the model does not forget and the gate can tell.
3. Fine-tune the current model (or train from scratch) with augmentation,
   early stopping on the selection sets, a time budget and reproducible seeds.
4. Gate (:mod:`models.gate`): candidate and current model on the gate sets,
   which training and selection never saw; promote only if the candidate is
   significantly better on the collected faces (paired McNemar mid-p) and not
   worse on FER2013 beyond the non-inferiority margin (Newcombe interval).
5. Model card (JSON + confusion matrix + learning curves), and, if promoted,
   release over MQTT (retained manifest + bytes) to every edge.

Exit codes: 0 done (promoted or refused: the card says), 2 bad config, 3 not
enough data to train, 4 release failed (the promoted model is registered and
current; ``emq-retrain release VERSION`` sends it again), 5 undecided: too few
labelled faces held out for the gate (or no FER2013 gate set) to decide; the
card says so, 6 the candidate could not be exported to LiteRT or evaluated by
the gate (nothing was registered).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from cloud.store import TrainingStore
from comms.mqtt import MqttClient
from comms.settings import MqttSettings, apply_identity_defaults
from comms.transport import Transport
from common.cli import configure_logging, load_or_exit, print_config
from common.config import StrictSettings
from contract.topics import Topics
from models.dataset import BaseSplit, CollectedDataset, DatasetSettings, build_dataset, load_rows, split_base_set
from models.face_import import ImportSettings
from models.gate import GateDecision, GateRule
from runtime.registry import ModelRegistry

log = logging.getLogger("models.retrain")

ENV_PREFIX = "EMQ_RETRAIN__"
IDENTITY = "retrain"
EXIT_NO_DATA, EXIT_RELEASE, EXIT_UNDECIDED, EXIT_GATE = 3, 4, 5, 6
RELEASE_CONNECT_TIMEOUT_S = 30.0


class DatasetConfig(StrictSettings):
    min_confidence: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="Also train on the model's own label when it was at least this sure (None: human labels only)."
    )
    duplicate_threshold: Annotated[float, Field(ge=0)] = 6.0
    session_gap_s: Annotated[float, Field(gt=0)] = 30.0
    selection_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(default=0.15, description="Of each device's faces (the latest but the gate's), for early stopping.")
    gate_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(default=0.25, description="Of each device's faces (the latest), held out for the gate.")
    min_train_samples: Annotated[int, Field(ge=1)] = Field(default=20, description="Refuse to train on fewer collected samples.")
    base_npz: Path | None = Field(default=None, description="FER2013 npz (x_train/y_train/x_val/y_val) to mix in, so the model does not forget; the gate needs it.")
    base_train_samples: Annotated[int, Field(ge=0)] = 5000
    collected_min_share: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.25, description="Repeat the collected training faces (whole copies) until they are at least this share of the "
        "training faces mixed with the base set's, so a few hundred new faces are not drowned out (0: no repeats).",
    )
    base_selection_samples: Annotated[int, Field(ge=0)] = Field(default=1000, description="x_val faces for early stopping.")
    base_gate_samples: Annotated[int, Field(ge=1)] | None = Field(default=None, description="x_val faces for the gate, none of them in selection (None: all the others).")
    base_gate_exclude: Path | None = Field(
        default=None, description="File of x_val row numbers (.npy, or text one per line) the FER2013 gate set must not use: "
        "e.g. the originals of faces that were collected and labelled for training (bench/bench_learning_loop.py).",
    )

    @model_validator(mode="after")
    def _leave_faces_to_train(self) -> "DatasetConfig":
        if self.selection_fraction + self.gate_fraction >= 1:
            raise ValueError(f"selection_fraction + gate_fraction must be below 1, got {self.selection_fraction + self.gate_fraction}")
        return self


class GateConfig(StrictSettings):
    alpha: Annotated[float, Field(gt=0, lt=1)] = Field(default=0.05, description="Promote only if McNemar's mid-p on the collected gate faces is below this.")
    noninferiority_margin: Annotated[float, Field(ge=0, lt=1)] = Field(default=0.005, description="On FER2013's gate faces the interval's lower bound must be above minus this (0.005: half a point).")
    confidence: Annotated[float, Field(gt=0, lt=1)] = Field(default=0.95, description="Of the Newcombe intervals.")
    min_deployment_faces: Annotated[int, Field(ge=1)] = Field(default=50, description="Fewer labelled faces held out for the gate: undecided (exit code 5).")

    def rule(self) -> GateRule:
        return GateRule(**self.model_dump())


class TrainingConfig(StrictSettings):
    """Defaults: the recipe chosen on the learning-loop benchmark (README, "The learning loop on a new camera"): mostly on
    its labelling pool; ``blend`` after the held-out figures of blend 0.8, which is why that section also reports a domain
    (``--seed``) no choice was made on."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = 8
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 64
    learning_rate: Annotated[float, Field(gt=0, lt=1)] = 3e-4
    patience: Annotated[int, Field(ge=1)] = 3
    time_budget_s: Annotated[float, Field(gt=0)] = 1800.0
    seed: int = 7
    augment: bool = True
    from_scratch: bool = False
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_epochs: Annotated[int, Field(ge=0)] = Field(default=1, description="Linear warm-up (cosine schedule only); a run of fewer epochs warms up for epochs - 1.")
    distillation: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.5, description="Blend the base set's training targets with the current model's answers by this weight "
        "(Learning without Forgetting), so fine-tuning keeps what it knew.",
    )
    freeze_batch_norm: bool = Field(default=False, description="Keep the current model's batch-norm statistics and scales.")
    early_stopping_on: Literal["first", "mean"] = Field(
        default="first", description="first: the collected selection set's loss (FER2013's if too few); mean: the mean over both.",
    )
    keep_last: bool = Field(
        default=True, description="Run every epoch of the schedule and keep the last weights: a few dozen collected selection "
        "faces are too few to pick an epoch by (README, the learning loop). False: early stopping with patience.",
    )
    blend: Annotated[float, Field(ge=0, le=1)] | Literal["auto"] = Field(
        default=0.5, description="Share of the fine-tuned weights in the candidate, the rest the current model's (WiSE-FT, "
        "Wortsman et al. 2022): keeps most of the gain on the new faces and most of what the model knew. 1: the fine-tuned "
        "model as it is; auto: the best blend on the collected selection faces among those keeping FER2013's selection accuracy.",
    )
    blend_tolerance: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.0025, description="With blend auto: how far below the current model a blend's FER2013 selection accuracy may be.",
    )


class RetrainConfig(StrictSettings):
    database_url: str = "sqlite:///var/cloud/emotion.db"
    model_store: Path | None = Field(default=None, description="Model registry folder (default: models/store or $EMQ_MODEL_STORE).")
    card_dir: Path = Field(default=Path("var/model-cards"), description="Model cards are written to <card_dir>/<version>/.")
    pki_dir: Path = Path("var/pki")
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    release: bool = Field(default=True, description="Publish a promoted model to the edges over MQTT.")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    face_import: ImportSettings = Field(default_factory=ImportSettings, description="emq-retrain import.")

    @model_validator(mode="after")
    def _fill_derived(self) -> "RetrainConfig":
        if self.release:
            apply_identity_defaults(self.mqtt, self.pki_dir, IDENTITY, client_id=IDENTITY)
        return self


class NotEnoughData(RuntimeError):
    pass


class GateFailed(RuntimeError):
    """The candidate could not be exported to LiteRT or judged by the gate; nothing was registered."""


class ReleaseFailed(RuntimeError):
    """The promoted model is registered and current, but sending it to the edges failed."""


@dataclass
class Outcome:
    version: str
    outcome: str  # the gate's: "promoted", "refused" or "undecided"
    released: bool
    card: list[Path]

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"


def base_split(config: DatasetConfig) -> BaseSplit | None:
    """Seeded, disjoint training, selection and gate samples of the base set, resized to 64x64."""
    if config.base_npz is None:
        return None
    exclude = load_rows(config.base_gate_exclude) if config.base_gate_exclude is not None else None
    return split_base_set(config.base_npz, config.base_train_samples, config.base_selection_samples, config.base_gate_samples, exclude)


def collected_repeats(collected_count: int, base_count: int, min_share: float) -> int:
    """Whole copies of the collected training faces so they are at least ``min_share`` of the mix (1: no repeat)."""
    if collected_count == 0 or base_count == 0 or min_share <= 0:
        return 1
    # repeats * c / (repeats * c + b) >= share  <=>  repeats >= share * b / ((1 - share) * c)
    return max(1, int(np.ceil(min_share * base_count / ((1 - min_share) * collected_count) - 1e-9)))


def training_data(collected: CollectedDataset, base: BaseSplit | None, collected_min_share: float = 0.0):
    """Training faces and the selection sets that steer early stopping: never a gate face.

    The collected faces are repeated (``collected_repeats``) against the base set's; the base set's
    faces are the ones ``TrainingData.distill`` marks for distillation.
    """
    from models.training import TrainingData  # TensorFlow from here on

    x_train, y_train = collected.train.x, collected.train.y
    selection = {}
    if len(collected.selection):
        selection["collected"] = (collected.selection.x, collected.selection.y)
    distill = np.zeros(len(y_train), bool)
    if base is not None:
        repeats = collected_repeats(len(y_train), len(base.train[1]), collected_min_share)
        if repeats > 1:
            log.info("collected training faces repeated %d times against %d base faces", repeats, len(base.train[1]))
        x_train = np.concatenate([np.tile(x_train, (repeats, 1, 1)), base.train[0]])
        y_train = np.concatenate([np.tile(y_train, repeats), base.train[1]])
        distill = np.concatenate([np.zeros(len(y_train) - len(base.train[1]), bool), np.ones(len(base.train[1]), bool)])
        if len(base.selection[1]):
            selection["fer2013"] = base.selection
    if not selection:
        raise NotEnoughData("no selection data for early stopping: collect more sessions or give dataset.base_npz")
    return TrainingData(x_train=x_train, y_train=y_train, validation=selection, distill=distill)


def gate_sets(collected: CollectedDataset, base: BaseSplit | None):
    """The deployment gate set and the reference gate sets (FER2013's)."""
    references = {"fer2013": base.gate} if base is not None else {}
    return (collected.gate.x, collected.gate.y), references


def collect(config: RetrainConfig) -> CollectedDataset:
    store = TrainingStore(config.database_url)
    try:
        settings = config.dataset
        return build_dataset(store, DatasetSettings(
            settings.min_confidence, settings.duplicate_threshold, settings.session_gap_s, settings.selection_fraction, settings.gate_fraction,
        ))
    finally:
        store.close()


def warn_if_undecidable(collected: CollectedDataset, base: BaseSplit | None, rule: GateRule) -> None:
    """Say at the start, not only after training, when the gate will not be able to decide."""
    if len(collected.gate) < rule.min_deployment_faces:
        log.warning("only %d labelled faces are held out for the gate (at least %d needed): the gate will be undecided; "
                    "label (or import) more faces", len(collected.gate), rule.min_deployment_faces)
    if base is None:
        log.warning("no dataset.base_npz: without FER2013 gate faces the gate will be undecided")


def run_retraining(config: RetrainConfig) -> Outcome:
    from models.card import write_model_card
    from models.training import TrainingSettings, train
    from models.versions import next_version, register_version

    collected = collect(config)
    log.info("collected data: %s; class balance %s", collected.counts, collected.class_balance())
    if len(collected.train) < config.dataset.min_train_samples:
        raise NotEnoughData(f"{len(collected.train)} collected training samples, fewer than {config.dataset.min_train_samples}: label more faces")
    base = base_split(config.dataset)
    rule = config.gate.rule()
    warn_if_undecidable(collected, base, rule)
    data = training_data(collected, base, config.dataset.collected_min_share)

    registry = ModelRegistry(config.model_store)
    current = registry.current()
    training = config.training.model_dump(exclude={"blend", "blend_tolerance"})
    training["warmup_epochs"] = min(training["warmup_epochs"], training["epochs"] - 1)  # a one-epoch run has no warm-up
    settings = TrainingSettings(**training)
    start_from = None if settings.from_scratch else registry.path_of(current, "keras")
    run = train(data, settings=settings, start_from=start_from, progress=log.info)
    log.info("trained %d epochs in %.0f s (%s), %.0f images/s", run.epochs_run, run.seconds, run.stopped_reason, run.images_per_second)
    model, blend = blended(run, data, start_from, config.training)
    summary = run.summary() if blend is None else dict(run.summary(), interpolation=blend.summary())

    deployment, references = gate_sets(collected, base)
    with tempfile.TemporaryDirectory(prefix="emq-candidate-") as folder:
        candidate, decision = export_and_gate(model, Path(folder), registry.path_of(current, "tflite"), deployment, references, rule)
        counts = dict(collected.counts, **base_counts(base))
        # Refused candidates are registered too (not current): their card needs a version, and the
        # registry is the record of what was tried.
        entry = register_version(
            registry, model, version=next_version(registry), parent=current.version,
            metrics=candidate_metrics(decision), data_counts=counts, tflite_path=candidate,
            source=f"retrained from {current.version} on collected crops" + (" + FER2013" if base is not None else ""),
            make_current=decision.promote,
        )
    card = write_model_card(
        config.card_dir / entry.version, entry, decision=decision, history=run.history,
        class_counts=collected.class_balance(), training=summary,
    )
    log.info("gate: %s (%s); model card %s", decision.outcome.upper(), "; ".join(decision.reasons), card[0])
    released = decision.promote and config.release and release_version(config, registry, entry.version)
    return Outcome(entry.version, decision.outcome, released, card)


def blended(run, data, start_from: Path | None, settings: TrainingConfig):
    """The model to gate: the fine-tuned one blended with the starting model (``settings.blend``), and how."""
    if settings.blend == 1 or start_from is None:
        return run.model, None
    import keras

    from models.training import choose_blend, validation_inputs
    from models.training.interpolation import DEFAULT_BLENDS

    reference = "fer2013" if "fer2013" in data.validation else None
    blends = DEFAULT_BLENDS if settings.blend == "auto" else (float(settings.blend),)
    model, choice = choose_blend(keras.models.load_model(start_from, compile=False), run.model, validation_inputs(data.validation),
                                 target="collected", reference=reference, tolerance=settings.blend_tolerance, blends=blends)
    log.info("candidate: %.2f fine-tuned + %.2f current weights (%s)", choice.blend, 1 - choice.blend,
             choice.reason if settings.blend == "auto" else "training.blend")
    return model, choice


def export_and_gate(model, folder: Path, current_tflite: Path, deployment, references, rule: GateRule) -> tuple[Path, GateDecision]:
    """The candidate as LiteRT, judged by the gate; any failure of either is a :class:`GateFailed`."""
    from models.convert import export_tflite
    from models.gate import gate

    try:
        candidate = export_tflite(model, folder / "candidate.tflite")
        return candidate, gate(candidate, current_tflite, deployment, references, rule)
    except Exception as error:  # LiteRT conversion or inference: a different failure from a release's
        raise GateFailed(f"the candidate could not be exported or gated: {type(error).__name__}: {error}") from error


def base_counts(base: BaseSplit | None) -> dict[str, int]:
    if base is None:
        return {}
    return {"base_train": len(base.train_rows), "base_selection": len(base.selection_rows), "base_gate": len(base.gate_rows)}


def candidate_metrics(decision: GateDecision) -> dict[str, float]:
    """The candidate's top-1 on each gate set, as the registry's metrics."""
    return {f"{name}_gate_top1": float(top1) for name, scores in decision.scores.items() if (top1 := scores["candidate"]) is not None}


def release_version(config: RetrainConfig, registry: ModelRegistry, version: str) -> bool:
    from models.release import publish_release, release_files

    manifest, blob = release_files(registry, version)
    client: Transport = MqttClient(config.mqtt).start()
    try:
        if not client.wait_connected(RELEASE_CONNECT_TIMEOUT_S):
            raise ReleaseFailed(f"cannot reach the broker: {client.last_error}")
        publish_release(client, Topics(config.mqtt.topic_prefix), manifest, blob)
    except (ConnectionError, RuntimeError) as error:
        if isinstance(error, ReleaseFailed):
            raise
        raise ReleaseFailed(str(error)) from error
    finally:
        client.stop(announce_stopped=False)
    log.info("released %s %s (%d bytes, sha256 %s) to the fleet", manifest.name, manifest.version, manifest.size, manifest.sha256[:12])
    return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emq-retrain", description="Fine-tune on collected, labelled faces; gate; release.",
        epilog="emq-retrain import --help: import labelled faces from outside. Exit codes: 0 done, 2 bad config, "
        "3 not enough data, 4 release failed, 5 undecided (too few labelled faces held out for the gate), "
        "6 the candidate could not be exported to LiteRT or gated.",
    )
    parser.add_argument("--config", type=Path)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--time-budget", type=float, help="seconds of training at most")
    parser.add_argument("--base-npz", type=Path, help="FER2013 npz to mix in")
    parser.add_argument("--no-release", action="store_true", help="gate and register, but do not publish")
    parser.add_argument("--print-config", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    training = {key: value for key, value in (("epochs", args.epochs), ("time_budget_s", args.time_budget)) if value is not None}
    overrides: dict = {"training": training} if training else {}
    if args.base_npz is not None:
        overrides["dataset"] = {"base_npz": str(args.base_npz)}
    if args.no_release:
        overrides["release"] = False
    return overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["import"]:
        return import_main(argv[1:])
    if argv[:1] == ["release"]:
        return release_main(argv[1:])
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)
    config = load_or_exit(RetrainConfig, args.config, ENV_PREFIX, _overrides(args), "emq-retrain")
    if args.print_config:
        print_config(config)
        return 0
    try:
        outcome = run_retraining(config)
    except NotEnoughData as error:
        print(f"emq-retrain: {error}", file=sys.stderr)
        return EXIT_NO_DATA
    except GateFailed as error:
        print(f"emq-retrain: {error}", file=sys.stderr)
        return EXIT_GATE
    except ReleaseFailed as error:
        print(f"emq-retrain: release failed: {error} (the model is registered; `emq-retrain release VERSION` sends it again)",
              file=sys.stderr)
        return EXIT_RELEASE
    words = {"promoted": "promoted", "refused": "not promoted (refused by the gate)", "undecided": "not promoted (the gate is undecided)"}
    print(f"{outcome.version}: {words[outcome.outcome]}"
          f"{', released to the edges' if outcome.released else ''}; model card {outcome.card[0]}")
    return EXIT_UNDECIDED if outcome.outcome == "undecided" else 0


def release_main(argv: list[str]) -> int:
    """``emq-retrain release VERSION``: publish a registered version to the fleet (after a failed release)."""
    parser = argparse.ArgumentParser(prog="emq-retrain release", description="Send a registered model version to the edges.")
    parser.add_argument("version")
    parser.add_argument("--config", type=Path)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    config = load_or_exit(RetrainConfig, args.config, ENV_PREFIX, {}, "emq-retrain release")
    registry = ModelRegistry(config.model_store)
    try:
        registry.get(args.version)
    except Exception as error:
        print(f"emq-retrain release: {error}", file=sys.stderr)
        return EXIT_NO_DATA
    try:
        release_version(config, registry, args.version)
    except ReleaseFailed as error:
        print(f"emq-retrain release: {error}", file=sys.stderr)
        return EXIT_RELEASE
    print(f"{args.version}: released to the edges")
    return 0


# -- emq-retrain import -------------------------------------------------------------------------


def _import_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emq-retrain import",
        description="Store labelled faces from outside (FOLDER/<emotion>/<image>, or a CSV of path,label) as human-labelled crops.",
    )
    parser.add_argument("folder", nargs="?", type=Path, help="one sub-folder per emotion name")
    parser.add_argument("--csv", type=Path, help="rows path,label instead of a folder")
    parser.add_argument("--source", help="tag stored with every face (default: the folder's or CSV's name)")
    parser.add_argument("--labelled-by", default="import", help="who gave the labels (stored with each label)")
    parser.add_argument("--config", type=Path)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def import_main(argv: list[str]) -> int:
    """``emq-retrain import``: 0 done (the summary lists what was skipped), 2 bad arguments or config, 3 no schema or no model."""
    from cloud.schema import SchemaError
    from models.face_import import import_faces, items_from_csv, items_from_folder

    parser = _import_parser()
    args = parser.parse_args(argv)
    if (args.folder is None) == (args.csv is None):
        parser.error("give a FOLDER or --csv FILE (one of them)")
    configure_logging(args.verbose)
    config = load_or_exit(RetrainConfig, args.config, ENV_PREFIX, {"release": False}, "emq-retrain import")
    origin = args.folder if args.folder is not None else args.csv
    if not (origin.is_dir() if args.folder is not None else origin.is_file()):
        print(f"emq-retrain import: {origin} does not exist", file=sys.stderr)
        return 2
    try:
        items, problems = items_from_folder(origin) if args.folder is not None else items_from_csv(origin)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        print(f"emq-retrain import: cannot read {origin}: {error}", file=sys.stderr)
        return 2
    try:
        target = _import_target(config, args.source or origin.resolve().stem, args.labelled_by)
    except (SchemaError, LookupError, OSError, ValueError) as error:
        print(f"emq-retrain import: {error}", file=sys.stderr)
        return EXIT_NO_DATA
    try:
        report = import_faces(items, target, config.face_import, problems)
    finally:
        target.store.close()
    for name, reason in report.skipped:
        print(f"skipped {name}: {reason}")
    for name, face_id in report.duplicates:
        print(f"duplicate {name}: already stored as face {face_id}")
    print(f"emq-retrain import: {report.summary()}")
    return 0


def _import_target(config: RetrainConfig, source: str, labelled_by: str):
    """The store to write to and the current model to classify with (as the edge would have)."""
    from models.face_import import ImportTarget
    from runtime.tflite_runner import TFLiteEmotionModel

    registry = ModelRegistry(config.model_store)
    entry = registry.current()
    if entry is None:
        raise LookupError(f"no current model in {registry.store}: run emq-model import-pretrained")
    model = TFLiteEmotionModel(registry.path_of(entry, "tflite"))
    store = TrainingStore(config.database_url)
    return ImportTarget(store, model.predict, entry.name, entry.version, source[:64], labelled_by)


if __name__ == "__main__":
    sys.exit(main())
