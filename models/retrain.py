"""The retraining job: collected crops + human labels → fine-tuned Mini-Xception → gate → release.

    emq-retrain [--config retrain.toml] [--epochs 5] [--time-budget 900] [--no-release]

1. Build the dataset from the cloud store (:mod:`models.dataset`): human labels
   first, optionally confident model labels; near-duplicates dropped; split by
   device and time.
2. Optionally mix in a base dataset (FER2013 npz) so the model does not forget.
3. Fine-tune the current model (or train from scratch) with augmentation,
   early stopping, a time budget and reproducible seeds.
4. Gate: candidate and current model on the same held-out sets; promote only
   if the candidate is not worse than the margin on any of them.
5. Model card (JSON + confusion matrix + learning curves), and, if promoted,
   release over MQTT (retained manifest + bytes) to every edge.

Exit codes: 0 done (promoted or not: the card says), 2 bad config, 3 not
enough data, 4 release failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from cloud.store import TrainingStore
from comms.mqtt import MqttClient
from comms.settings import MqttSettings, apply_identity_defaults
from comms.transport import Transport
from common.cli import configure_logging, load_or_exit, print_config
from common.config import StrictSettings
from contract.topics import Topics
from models.dataset import CollectedDataset, DatasetSettings, build_dataset
from runtime.preprocess import resize_faces
from runtime.registry import ModelRegistry

log = logging.getLogger("models.retrain")

ENV_PREFIX = "EMQ_RETRAIN__"
IDENTITY = "retrain"
EXIT_NO_DATA, EXIT_RELEASE = 3, 4


class DatasetConfig(StrictSettings):
    min_confidence: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="Also use the model's own label when it was at least this sure (None: human labels only)."
    )
    duplicate_threshold: Annotated[float, Field(ge=0)] = 6.0
    session_gap_s: Annotated[float, Field(gt=0)] = 30.0
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    min_train_samples: Annotated[int, Field(ge=1)] = Field(default=20, description="Refuse to train on fewer collected samples.")
    base_npz: Path | None = Field(default=None, description="FER2013 npz (x_train/y_train/x_val/y_val) to mix in, so the model does not forget.")
    base_train_samples: Annotated[int, Field(ge=0)] = 5000
    base_validation_samples: Annotated[int, Field(ge=0)] = 1000


class TrainingConfig(StrictSettings):
    epochs: Annotated[int, Field(ge=1, le=1000)] = 10
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 64
    learning_rate: Annotated[float, Field(gt=0, lt=1)] = 1e-4
    patience: Annotated[int, Field(ge=1)] = 3
    time_budget_s: Annotated[float, Field(gt=0)] = 1800.0
    seed: int = 7
    augment: bool = True
    from_scratch: bool = False


class RetrainConfig(StrictSettings):
    database_url: str = "sqlite:///var/cloud/emotion.db"
    model_store: Path | None = Field(default=None, description="Model registry folder (default: models/store or $EMQ_MODEL_STORE).")
    card_dir: Path = Field(default=Path("var/model-cards"), description="Model cards are written to <card_dir>/<version>/.")
    pki_dir: Path = Path("var/pki")
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    release: bool = Field(default=True, description="Publish a promoted model to the edges over MQTT.")
    gate_margin: Annotated[float, Field(ge=0, le=1)] = Field(default=0.01, description="Promote unless worse than the current model by more than this (top-1) on any set.")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="after")
    def _fill_derived(self) -> "RetrainConfig":
        if self.release:
            apply_identity_defaults(self.mqtt, self.pki_dir, IDENTITY, client_id=IDENTITY)
        return self


class NotEnoughData(RuntimeError):
    pass


@dataclass
class Outcome:
    version: str
    promoted: bool
    released: bool
    card: list[Path]


def base_dataset(config: DatasetConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """A seeded sample of the base set, resized to the model's 64x64 input as at training time."""
    if config.base_npz is None:
        return None
    arrays = np.load(config.base_npz)
    generator = np.random.default_rng(0)
    train = generator.permutation(len(arrays["y_train"]))[: config.base_train_samples]
    validation = generator.permutation(len(arrays["y_val"]))[: config.base_validation_samples]
    return (
        resize_faces(arrays["x_train"][train]), arrays["y_train"][train].astype(np.int64),
        resize_faces(arrays["x_val"][validation]), arrays["y_val"][validation].astype(np.int64),
    )


def training_data(collected: CollectedDataset, base):
    from models.training import TrainingData  # TensorFlow from here on

    x_train, y_train = collected.x_train, collected.y_train
    validation = {}
    if len(collected.y_validation):
        validation["collected"] = (collected.x_validation, collected.y_validation)
    if base is not None:
        x_train = np.concatenate([x_train, base[0]])
        y_train = np.concatenate([y_train, base[1]])
        validation["fer2013"] = (base[2], base[3])
    if not validation:
        raise NotEnoughData("no validation data: collect more sessions or give dataset.base_npz")
    return TrainingData(x_train=x_train, y_train=y_train, validation=validation)


def run_retraining(config: RetrainConfig) -> Outcome:
    from models.card import write_model_card
    from models.convert import export_tflite
    from models.gate import gate
    from models.training import TrainingSettings, train
    from models.versions import next_version, register_version

    store = TrainingStore(config.database_url)
    try:
        collected = build_dataset(store, DatasetSettings(
            config.dataset.min_confidence, config.dataset.duplicate_threshold, config.dataset.session_gap_s, config.dataset.validation_fraction,
        ))
    finally:
        store.close()
    log.info("collected data: %s; class balance %s", collected.counts, collected.class_balance())
    if len(collected.y_train) < config.dataset.min_train_samples:
        raise NotEnoughData(f"{len(collected.y_train)} collected training samples, fewer than {config.dataset.min_train_samples}: label more faces")
    data = training_data(collected, base_dataset(config.dataset))

    registry = ModelRegistry(config.model_store)
    current = registry.current()
    settings = TrainingSettings(**config.training.model_dump())
    start_from = None if settings.from_scratch else registry.path_of(current, "keras")
    run = train(data, settings=settings, start_from=start_from, progress=log.info)
    log.info("trained %d epochs in %.0f s (%s), %.0f images/s", run.epochs_run, run.seconds, run.stopped_reason, run.images_per_second)

    with tempfile.TemporaryDirectory(prefix="emq-candidate-") as folder:
        candidate = export_tflite(run.model, Path(folder) / "candidate.tflite")
        decision = gate(
            candidate_tflite=candidate, current_tflite=registry.path_of(current, "tflite"),
            evaluation_sets=data.validation, margin=config.gate_margin,
        )
        counts = dict(collected.counts, base_train=int(len(data.y_train) - len(collected.y_train)))
        # Refused candidates are registered too (not current): their card needs a version, and the
        # registry is the record of what was tried.
        entry = register_version(
            registry, run.model, version=next_version(registry), parent=current.version,
            metrics=candidate_metrics(decision), data_counts=counts, tflite_path=candidate,
            source=f"retrained from {current.version} on collected crops" + (" + FER2013" if config.dataset.base_npz else ""),
            make_current=decision.promote,
        )
    card = write_model_card(
        config.card_dir / entry.version, entry, decision=decision, history=run.history,
        class_counts=collected.class_balance(), training=run.summary(),
    )
    log.info("gate: %s (%s); model card %s", "PROMOTED" if decision.promote else "kept current", "; ".join(decision.reasons), card[0])
    released = decision.promote and config.release and release_version(config, registry, entry.version)
    return Outcome(entry.version, decision.promote, released, card)


def candidate_metrics(decision) -> dict[str, float]:
    """The candidate's top-1 on each held-out set, as the registry's metrics."""
    return {f"{name}_val_top1": float(scores["candidate"]) for name, scores in decision.scores.items() if scores.get("candidate") is not None}


def release_version(config: RetrainConfig, registry: ModelRegistry, version: str) -> bool:
    from models.release import publish_release, release_files

    manifest, blob = release_files(registry, version)
    client: Transport = MqttClient(config.mqtt).start()
    try:
        if not client.wait_connected(30):
            raise ConnectionError(f"cannot reach the broker: {client.last_error}")
        publish_release(client, Topics(config.mqtt.topic_prefix), manifest, blob)
    finally:
        client.stop(announce_stopped=False)
    log.info("released %s %s (%d bytes, sha256 %s) to the fleet", manifest.name, manifest.version, manifest.size, manifest.sha256[:12])
    return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emq-retrain", description="Fine-tune on collected, labelled faces; gate; release.")
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
    except (ConnectionError, RuntimeError) as error:
        print(f"emq-retrain: release failed: {error}", file=sys.stderr)
        return EXIT_RELEASE
    print(f"{outcome.version}: {'promoted' if outcome.promoted else 'not promoted'}"
          f"{', released to the edges' if outcome.released else ''}; model card {outcome.card[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
