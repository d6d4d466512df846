"""Try training recipes for the learning loop in-process, on a kept benchmark run, without its held-out half.

    python bench/bench_learning_loop.py --fractions 1.0 --epochs 1 --keep     # once: prints its work folder
    python bench/loop_experiments.py WORK [--fraction 0.5] [--variants NAME ...] [--json FILE]

The kept run holds the pool's crops as ``emq-ingest`` stored them (``WORK/cloud/emotion.db``) and
``WORK/loop-data.npz`` (the pool's x_val rows, and its detected faces in the order the benchmark labels
them).  For a share ``--fraction`` of the pool this keeps the labels of the faces the benchmark would have
labelled (a copy of the database), builds the job's dataset with the job's own code (``models.retrain``:
``collect``, ``base_split``, ``training_data``), trains each variant with ``models.training.train`` from the
base model, and scores it on a **validation split carved from the labelling pool**: the pool's detected faces
that are *not* labelled at that share (their stored, shifted crops, and their clean 48 px originals; less
the few whose originals are in FER2013's selection set, which early stopping watches).
The benchmark's held-out half is never loaded here, so choosing a recipe on these figures does not tune on
the benchmark's test.  Also shown: the collected gate set (as the job's gate would see it, Keras not LiteRT).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.dataset import base_rows, decode_crop  # noqa: E402
from models.paired import PairedCounts, mcnemar_mid_p  # noqa: E402
from models.retrain import DatasetConfig, RetrainConfig, TrainingConfig, base_split, blended, collect, training_data  # noqa: E402
from runtime.preprocess import resize_faces  # noqa: E402
from runtime.registry import ModelRegistry  # noqa: E402

FER2013 = REPO.parent / "shared" / "data" / "fer2013_trainval.npz"

# The benchmark's recipe before issue 12 item 3, and what was tried against it (each a change to it).
BEFORE = {"epochs": 8, "learning_rate": 3e-4, "schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1, "patience": 3}
VARIANTS: dict[str, dict] = {
    "before": {"base_train": 1000},
    "base5000": {"base_train": 5000},
    "base5000-share25": {"base_train": 5000, "share": 0.25},
    "base5000-share25-kd50": {"base_train": 5000, "share": 0.25, "distillation": 0.5},
    "base5000-share25-kd50-mean": {"base_train": 5000, "share": 0.25, "distillation": 0.5, "early_stopping_on": "mean"},
    "base5000-share25-kd50-last": {"base_train": 5000, "share": 0.25, "distillation": 0.5, "keep_last": True},
    "base5000-share40-kd50-last": {"base_train": 5000, "share": 0.40, "distillation": 0.5, "keep_last": True},
    "base5000-share25-kd50-frozenbn": {"base_train": 5000, "share": 0.25, "distillation": 0.5, "freeze_batch_norm": True},
    "base5000-share25-kd50-lr1e-4": {"base_train": 5000, "share": 0.25, "distillation": 0.5, "learning_rate": 1e-4},
    "base5000-share40-kd50": {"base_train": 5000, "share": 0.40, "distillation": 0.5},
    "base5000-share25-kd80": {"base_train": 5000, "share": 0.25, "distillation": 0.8},
    "base5000-share50-kd50": {"base_train": 5000, "share": 0.50, "distillation": 0.5},
    "base5000-share40-kd50-frozenbn": {"base_train": 5000, "share": 0.40, "distillation": 0.5, "freeze_batch_norm": True},
    "base5000-share40-kd50-lr5e-4": {"base_train": 5000, "share": 0.40, "distillation": 0.5, "learning_rate": 5e-4},
}


def labelled_copy(work: Path, face_ids: np.ndarray, folder: Path) -> Path:
    """A copy of the kept database where only ``face_ids`` carry a person's label."""
    database = folder / "emotion.db"
    shutil.copy(work / "cloud" / "emotion.db", database)
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("CREATE TEMP TABLE keep (id INTEGER PRIMARY KEY)")
        connection.executemany("INSERT INTO keep VALUES (?)", [(int(face_id),) for face_id in face_ids])
        connection.execute("DELETE FROM labels WHERE face_id NOT IN (SELECT id FROM keep)")
        connection.commit()
    return database


def stored_crops(work: Path, face_ids: np.ndarray) -> np.ndarray:
    with closing(sqlite3.connect(work / "cloud" / "emotion.db")) as connection:
        rows = dict(connection.execute(f"SELECT id, crop_png FROM faces WHERE id IN ({','.join(map(str, face_ids))})").fetchall())
    return np.stack([decode_crop(rows[int(face_id)]) for face_id in face_ids])


def predict(model, faces: np.ndarray) -> np.ndarray:
    from models.training import model_inputs

    return model.predict(model_inputs(faces), batch_size=256, verbose=0).argmax(axis=1)


def scores(model, base_model, sets: dict) -> dict:
    out = {}
    for name, (faces, labels) in sets.items():
        candidate = predict(model, faces)
        entry = {"faces": len(labels), "top1": float(np.mean(candidate == labels))}
        if name == "collected_gate":
            counts = PairedCounts.of(labels, candidate, predict(base_model, faces))
            entry.update(b=counts.current_only, c=counts.candidate_only, mid_p=mcnemar_mid_p(counts))
        out[name] = entry
    return out


def sweep(tuned, base_model, sets: dict, before: dict) -> None:
    """Each blend of the base and the tuned weights on the validation split: what the job's choice picks from."""
    import keras

    from models.training.interpolation import DEFAULT_BLENDS, blend_weights

    probe = keras.models.clone_model(tuned)
    for blend in DEFAULT_BLENDS:
        blend_weights(base_model, tuned, blend, probe)
        after = scores(probe, base_model, sets)
        print(f"  blend {blend:.1f}: " + "  ".join(f"{key} {100 * (after[key]['top1'] - before[key]['top1']):+6.2f}" for key in after), flush=True)


def report(name: str, run, after: dict, before: dict, seconds: float, args, wanted: int, train_count: int, settings: dict) -> None:
    record = {"variant": name, "fraction": args.fraction, "labelled": wanted, "train_count": train_count,
              "epochs_run": run.epochs_run, "best_epoch": run.best_epoch, "seconds": round(seconds, 1),
              "points": {key: round(100 * (after[key]["top1"] - before[key]["top1"]), 2) for key in after},
              "after": after, "before": before, "settings": settings}
    gate = after["collected_gate"]
    print(f"{name:34s} shifted {record['points']['val_shifted']:+6.2f}  clean {record['points']['val_clean']:+6.2f}  "
          f"collected gate {record['points']['collected_gate']:+6.2f} (b {gate['b']}, c {gate['c']}, mid-p {gate['mid_p']:.3f})  "
          f"{run.epochs_run} ep (best {run.best_epoch}), {seconds:.0f} s", flush=True)
    if args.json:
        with args.json.open("a") as output:
            output.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="work folder of a `bench_learning_loop.py --keep` run")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of the pool's detected faces labelled (below 1)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--base-selection", type=int, default=300)
    parser.add_argument("--time-budget", type=float, default=900.0)
    parser.add_argument("--json", type=Path, help="append one line of JSON per variant here")
    parser.add_argument("--blend-tolerance", type=float, nargs="*", default=[],
                        help="also score the job's weight blend (training.blend auto) chosen with each of these tolerances")
    parser.add_argument("--blend-sweep", action="store_true", help="also print every blend's figures (0, 0.1, ..., 1)")
    args = parser.parse_args(argv)

    import keras

    from models.training import TrainingSettings, train

    kept = np.load(args.work / "loop-data.npz")
    pool_rows, face_ids, positions = kept["pool_rows"], kept["face_ids"], kept["positions"]
    with np.load(FER2013) as arrays:
        x_val, y_val = arrays["x_val"], arrays["y_val"]
    wanted = int(round(args.fraction * len(face_ids)))
    # The pool's faces not labelled at this share, less those whose originals steer early stopping (FER2013 selection).
    _, selection_rows, _ = base_rows(28_709, len(y_val), 0, args.base_selection, None)
    rest = np.arange(wanted, len(face_ids))
    rest = rest[~np.isin(pool_rows[positions[rest]], selection_rows)]
    rows = pool_rows[positions[rest]]
    validation = {
        "val_shifted": (stored_crops(args.work, face_ids[rest]), y_val[rows].astype(np.int64)),
        "val_clean": (resize_faces(x_val[rows]), y_val[rows].astype(np.int64)),
    }
    # Clean originals need no detection: every pool picture not labelled at this share (less FER2013's selection
    # rows) gives a larger, less noisy figure of what fine-tuning costs on FER2013.
    unlabelled = np.setdiff1d(np.setdiff1d(pool_rows, pool_rows[positions[:wanted]]), selection_rows)
    validation["val_clean_all"] = (resize_faces(x_val[unlabelled]), y_val[unlabelled].astype(np.int64))
    folder = Path(tempfile.mkdtemp(prefix="emq-loop-exp-"))
    exclude = folder / "pool-rows.npy"
    np.save(exclude, pool_rows)
    database = labelled_copy(args.work, face_ids[:wanted], folder)
    config = RetrainConfig(database_url=f"sqlite:///{database}", release=False,
                           dataset=DatasetConfig(min_train_samples=1, base_npz=FER2013, base_selection_samples=args.base_selection,
                                                 base_gate_exclude=exclude))
    collected = collect(config)
    sets = dict(validation, collected_gate=(collected.gate.x, collected.gate.y))
    print(f"{wanted} labelled: collected {collected.counts}; validation split {len(validation['val_shifted'][1])} unlabelled pool faces",
          flush=True)
    start_from = ModelRegistry().path_of(ModelRegistry().get("1.0.0"), "keras")
    base_model = keras.models.load_model(start_from, compile=False)
    before = scores(base_model, base_model, sets)
    print("base model:", json.dumps(before), flush=True)
    bases: dict[int, object] = {}
    for name in args.variants:
        variant = dict(VARIANTS[name])
        base_train, share = variant.pop("base_train"), variant.pop("share", 0.0)
        if base_train not in bases:
            bases[base_train] = base_split(config.dataset.model_copy(update={"base_train_samples": base_train}))
        data = training_data(collected, bases[base_train], share)
        settings = TrainingSettings(**{**BEFORE, "time_budget_s": args.time_budget, **variant})
        started = time.monotonic()
        run = train(data, settings=settings, start_from=start_from, progress=None)
        seconds = time.monotonic() - started
        report(name, run, scores(run.model, base_model, sets), before, seconds, args, wanted, len(data.y_train),
               {**variant, "base_train": base_train, "share": share})
        if args.blend_sweep:
            sweep(run.model, base_model, sets, before)
        for tolerance in args.blend_tolerance:
            model, choice = blended(run, data, start_from, TrainingConfig(blend="auto", blend_tolerance=tolerance))
            report(f"{name}+blend{choice.blend:.1f}@{tolerance}", run, scores(model, base_model, sets), before, seconds, args, wanted,
                   len(data.y_train), {**variant, "base_train": base_train, "share": share, "blend": choice.blend, "tolerance": tolerance})
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
