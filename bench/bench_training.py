"""Training benchmark: throughput on 10,000 faces, and how far a from-scratch run gets in a time budget.

    python bench/bench_training.py [--npz ../shared/data/fer2013_trainval.npz] [--time-budget 1200] [--json out.json]

(a) throughput: ``models.training.train`` on 10,000 FER2013 training faces
    (a seeded random sample, resized to 64x64 like the edge does), with and
    without augmentation, for ``--throughput-epochs`` epochs each.  Reported
    from the last epoch (the first one pays for graph tracing): training
    images/s (steps only), training seconds per epoch, and the epoch's wall
    time including validation on the 3,589 FER2013 validation faces.
(b) from scratch: the full FER2013 training split (28,709 faces), validated
    on x_val (PublicTest, 3,589), Arriaga's recipe (batch 32, Adam 1e-3,
    augmentation), until ``--time-budget`` seconds.  Reported: the
    validation-accuracy curve, the best accuracy, the wall time, the time to
    reach ``--target`` (65 %) if it did, and otherwise an estimate of the epochs
    needed from a least-squares fit of accuracy = a + b ln(epoch).

Uses every core TensorFlow sees (2 on the reference machine); the machine's
load average is recorded because other work on a shared machine slows training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))  # run as a script from anywhere, without installing the package
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter drowns the progress lines

import numpy as np

from runtime.preprocess import resize_faces

DEFAULT_NPZ = REPOSITORY.parent / "shared" / "data" / "fer2013_trainval.npz"
THROUGHPUT_FACES = 10_000
TARGET_ACCURACY = 0.65
# Arriaga's released checkpoint: epoch 102, 0.66 validation accuracy (on PublicTest + PrivateTest).
REFERENCE_EPOCHS = 102


def load_fer2013(npz: Path) -> dict[str, np.ndarray]:
    """FER2013 train and validation faces resized to 64x64 uint8, labels int64."""
    with np.load(npz) as data:
        return {
            "x_train": resize_faces(data["x_train"]),
            "y_train": data["y_train"].astype(np.int64),
            "x_val": resize_faces(data["x_val"]),
            "y_val": data["y_val"].astype(np.int64),
        }


def random_sample(faces: np.ndarray, labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random sample: the FER2013 arrays are sorted by class, so a slice would be one emotion."""
    chosen = np.random.default_rng(seed).choice(len(labels), size=min(count, len(labels)), replace=False)
    return faces[chosen], labels[chosen]


def onednn_enabled() -> bool:
    """Whether TensorFlow's oneDNN kernels are on in this process (TF_ENABLE_ONEDNN_OPTS)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


# -- (a) throughput -----------------------------------------------------------------------------


def measure_throughput(
    fer2013: dict[str, np.ndarray], faces: int, epochs: int, batch_size: int
) -> list[dict[str, Any]]:
    """Train ``epochs`` epochs from scratch on ``faces`` faces, with and without augmentation."""
    from models.training import TrainingData, TrainingSettings, train

    x_train, y_train = random_sample(fer2013["x_train"], fer2013["y_train"], faces, seed=0)
    data = TrainingData(x_train, y_train, validation={"fer2013_val": (fer2013["x_val"], fer2013["y_val"])})
    results = []
    for augment in (True, False):
        print(f"\n(a) throughput: {len(y_train)} faces, augment={augment}, {epochs} epochs", file=sys.stderr)
        settings = TrainingSettings(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=1e-3,
            patience=epochs,
            augment=augment,
            from_scratch=True,
        )
        run = train(data, settings=settings)
        history = run.history
        results.append(
            {
                "faces": len(y_train),
                "augment": augment,
                "batch_size": batch_size,
                "epochs": run.epochs_run,
                # The last epoch: the first one includes tracing the training graph.
                "images_per_second": history["train_images"][-1] / history["train_seconds"][-1],
                "train_seconds_per_epoch": history["train_seconds"][-1],
                "epoch_seconds_with_validation": history["epoch_seconds"][-1],
                "first_epoch_seconds": history["epoch_seconds"][0],
                "images_per_second_all_epochs": run.images_per_second,
            }
        )
    return results


# -- (b) from scratch ---------------------------------------------------------------------------


def train_from_scratch(
    fer2013: dict[str, np.ndarray], time_budget_s: float, batch_size: int, learning_rate: float, target: float
) -> dict[str, Any]:
    """Arriaga's recipe from random weights on the full training split, until the time budget runs out."""
    from models.training import TrainingData, TrainingSettings, train

    data = TrainingData(
        fer2013["x_train"], fer2013["y_train"], validation={"fer2013_val": (fer2013["x_val"], fer2013["y_val"])}
    )
    settings = TrainingSettings(
        epochs=10_000,  # the budget decides, as Arriaga's num_epochs=10000 left it to early stopping
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=50,  # Arriaga's patience: never the limiting factor within a budget of minutes
        time_budget_s=time_budget_s,
        augment=True,
        from_scratch=True,
    )
    print(f"\n(b) from scratch: {len(data.y_train)} faces, budget {time_budget_s:.0f} s", file=sys.stderr)
    run = train(data, settings=settings)
    accuracy = run.history["val_accuracy"]
    elapsed = np.cumsum(run.history["epoch_seconds"]).tolist()
    reached = next((index for index, value in enumerate(accuracy) if value >= target), None)
    complete_epochs = [
        index for index, images in enumerate(run.history["train_images"]) if images >= len(data.y_train)
    ]
    return {
        "train_faces": len(data.y_train),
        "validation_faces": len(fer2013["y_val"]),
        "settings": run.settings.to_json(),
        "wall_seconds": run.seconds,
        "epochs_run": run.epochs_run,
        "complete_epochs": len(complete_epochs),
        "stopped_reason": run.stopped_reason,
        "images_per_second": run.images_per_second,
        "seconds_per_epoch": float(np.median([run.history["epoch_seconds"][index] for index in complete_epochs]))
        if complete_epochs
        else None,
        "curve": [
            {
                "epoch": index + 1,
                "elapsed_s": elapsed[index],
                "val_accuracy": accuracy[index],
                "val_loss": run.history["val_loss"][index],
                "train_accuracy": run.history["accuracy"][index],
            }
            for index in range(run.epochs_run)
        ],
        "best_val_accuracy": max(accuracy),
        "best_epoch": int(np.argmax(accuracy)) + 1,
        "target": target,
        "reached_target_epoch": None if reached is None else reached + 1,
        "reached_target_seconds": None if reached is None else elapsed[reached],
        "estimate": estimate_epochs_to_target([accuracy[index] for index in complete_epochs], target),
    }


def estimate_epochs_to_target(accuracy: Sequence[float], target: float) -> dict[str, Any] | None:
    """Fit accuracy = a + b ln(epoch) to the running best of complete epochs >= 2 and solve for ``target``.

    A logarithmic fit is a deliberately rough, optimistic-early extrapolation:
    real curves flatten faster, so read the result as a lower bound.
    """
    running_best = np.maximum.accumulate(np.asarray(accuracy, dtype=np.float64))
    epochs = np.arange(1, len(running_best) + 1, dtype=np.float64)
    usable = epochs >= 2
    if usable.sum() < 3:
        return None
    slope, intercept = np.polyfit(np.log(epochs[usable]), running_best[usable], deg=1)
    needed = math.exp((target - intercept) / slope) if slope > 0 else None
    return {
        "model": "val_accuracy = a + b ln(epoch), running best, complete epochs >= 2",
        "a": float(intercept),
        "b": float(slope),
        "epochs_to_target": None if needed is None else float(needed),
        "reference_epochs": REFERENCE_EPOCHS,
    }


# -- report -------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    environment = report["environment"]
    print(
        f"\nmachine: {environment['cpu_count']} cores, tensorflow {environment['tensorflow']}, "
        f"oneDNN {'on' if environment['onednn'] else 'off'}, load average {environment['load_before']} -> "
        f"{environment['load_after']}"
    )
    if report.get("throughput"):
        print(f"\n(a) training throughput, {report['throughput'][0]['faces']} FER2013 faces (64x64), last epoch")
        print(f"{'augment':<9}{'batch':>6}{'img/s':>9}{'train s/epoch':>15}{'epoch s (+val)':>16}{'1st epoch s':>13}")
        for row in report["throughput"]:
            print(
                f"{row['augment']!s:<9}{row['batch_size']:>6}{row['images_per_second']:>9.0f}"
                f"{row['train_seconds_per_epoch']:>15.1f}{row['epoch_seconds_with_validation']:>16.1f}"
                f"{row['first_epoch_seconds']:>13.1f}"
            )
    scratch = report.get("from_scratch")
    if scratch:
        _print_scratch(scratch)


def _print_scratch(scratch: dict[str, Any]) -> None:
    print(
        f"\n(b) from scratch on {scratch['train_faces']} faces, validated on {scratch['validation_faces']}: "
        f"{scratch['epochs_run']} epochs ({scratch['complete_epochs']} complete) in {scratch['wall_seconds']:.0f} s, "
        f"stopped by {scratch['stopped_reason']}, {scratch['images_per_second']:.0f} img/s"
    )
    print(f"{'epoch':>6}{'elapsed s':>11}{'train acc':>11}{'val acc':>9}{'val loss':>10}")
    for point in scratch["curve"]:
        print(
            f"{point['epoch']:>6}{point['elapsed_s']:>11.0f}{point['train_accuracy']:>11.4f}"
            f"{point['val_accuracy']:>9.4f}{point['val_loss']:>10.4f}"
        )
    print(f"best val accuracy {scratch['best_val_accuracy']:.4f} at epoch {scratch['best_epoch']}")
    if scratch["reached_target_epoch"] is not None:
        print(
            f"reached {scratch['target']:.0%} at epoch {scratch['reached_target_epoch']} "
            f"after {scratch['reached_target_seconds']:.0f} s"
        )
        return
    estimate = scratch["estimate"]
    if estimate and estimate["epochs_to_target"] is not None:
        epochs = estimate["epochs_to_target"]
        hours = epochs * scratch["seconds_per_epoch"] / 3600 if scratch["seconds_per_epoch"] else float("nan")
        print(
            f"did not reach {scratch['target']:.0%}; fit {estimate['a']:.3f} + {estimate['b']:.3f} ln(epoch) "
            f"reaches it at ~{epochs:.0f} epochs (~{hours:.1f} h at this speed); Arriaga's checkpoint: epoch "
            f"{estimate['reference_epochs']}"
        )
    else:
        print(f"did not reach {scratch['target']:.0%}; too few complete epochs to extrapolate")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ, help="FER2013 npz (x_train, y_train, x_val, y_val)")
    parser.add_argument("--time-budget", type=float, default=1200.0, help="seconds for the from-scratch run (b)")
    parser.add_argument("--throughput-faces", type=int, default=THROUGHPUT_FACES)
    parser.add_argument("--throughput-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="Arriaga's batch size")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="for (b); Adam's default, as Arriaga")
    parser.add_argument("--target", type=float, default=TARGET_ACCURACY)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-scratch", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the full report here")
    arguments = parser.parse_args(argv)
    if not arguments.npz.is_file():
        parser.error(f"{arguments.npz} not found")

    load_before = [round(value, 2) for value in os.getloadavg()]
    fer2013 = load_fer2013(arguments.npz)
    import tensorflow as tf

    report: dict[str, Any] = {}
    if not arguments.skip_throughput:
        report["throughput"] = measure_throughput(
            fer2013, arguments.throughput_faces, arguments.throughput_epochs, arguments.batch_size
        )
    if not arguments.skip_scratch:
        report["from_scratch"] = train_from_scratch(
            fer2013, arguments.time_budget, arguments.batch_size, arguments.learning_rate, arguments.target
        )
    report["environment"] = {
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "onednn": onednn_enabled(),
        "load_before": load_before,
        "load_after": [round(value, 2) for value in os.getloadavg()],
    }
    print_report(report)
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nreport written to {arguments.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
