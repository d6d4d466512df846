"""Benchmark: the learning loop on a shifted domain, end to end, with every part real.

    python bench/bench_learning_loop.py [--fractions 0.25 0.5 1.0] [--faces 3589] [--epochs 8]
                                        [--json docs/bench-learning-loop.json] [--tiny] [--keep] [--frames-from WORK]

``--keep`` leaves the work folder, with what ``bench/loop_experiments.py`` needs to try training recipes
on the stored pool without this benchmark's held-out half; ``--frames-from`` reuses a kept run's frames.

1. **A new camera.** FER2013 PublicTest faces (``x_val``, which the pretrained
   model never trained on; ../shared/data) go through a seeded camera model:
   a different crop (window 46-54 px of the reflect-padded 48 px face, shifted
   by up to 3 px), upscaled to 160-200 px, rotated by up to 8 degrees, placed
   in a 640x480 frame on a blurred background (one of four quadrants, so
   consecutive faces are separate tracks), low light (gain 0.45-0.65, gamma
   1.3-1.8), motion blur (5-11 px at a random angle), sensor noise (read +
   shot) and JPEG quality 30-50.  The faces are split at random (seeded) into
   a labelling pool and a held-out half, never mixed.
2. **Collection, the real path.** The pool's frames are an image folder for
   ``emq-edge`` (``--source <folder> --loop``, frames named by position, so a
   stored result's frame_number is the picture it came from); the edge
   publishes over TLS MQTT to this repo's Mosquitto, ``emq-ingest`` stores
   results and crops in SQLite.  After one pass a person pauses the edge from
   the web UI (``POST /api/devices/<id>/commands``).
3. **Labelling, as a person would.** Through the web UI's JSON API
   (``POST /api/labels`` with the session's CSRF token), the true label of a
   seeded random share of the pool's detected faces (cumulative: the 50 %
   labels include the 25 % ones).  Detections that are not the placed face are
   left unlabelled, as a person would.
4. **Retraining.** ``emq-retrain`` per fraction, from the base model (the job's
   store is set back to 1.0.0 before each run), with FER2013 mixed in; the
   FER2013 gate set excludes the pool's originals
   (``dataset.base_gate_exclude``).  The gate decides; a promoted model is
   released over MQTT and the running (paused) edge reports the new version in
   its stats.
5. **Evaluation.** Held-out frames through the edge's own detector and crop
   (in-process, ``edge.perception``), classified by the old and the new TFLite
   model (``runtime``); the clean 48 px originals of the held-out half
   classified directly.  Held-out faces whose originals are in FER2013's
   selection set (early stopping) are left out of both, so nothing evaluated
   steered training.

Target (issue #12): +5 points or more on the shifted held-out half with 50 %
labelled, and the clean originals not worse than -0.5 points.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from broker.config import BrokerSettings  # noqa: E402
from broker.identities import init_pki  # noqa: E402
from broker.runner import MosquittoProcess  # noqa: E402
from comms.mqtt import MqttClient  # noqa: E402
from comms.settings import pki_mqtt_settings  # noqa: E402
from contract.emotions import EMOTIONS  # noqa: E402
from contract.topics import Topics  # noqa: E402
from contract.validation import parse_stats  # noqa: E402
from models.dataset import base_rows  # noqa: E402
from runtime.registry import ModelRegistry  # noqa: E402
from tests.cloud_helpers import ingest_env, start_ingest  # noqa: E402
from tests.conftest import Collector, component_env, console_script, free_port, start_service  # noqa: E402
from tests.webui_helpers import HttpSession, start_webui, webui_config  # noqa: E402

FER2013 = REPO.parent / "shared" / "data" / "fer2013_trainval.npz"
DEVICE = "cam-a"
FRAME_WIDTH, FRAME_HEIGHT = 640, 480
BLANK_FRAMES = 60  # an empty scene after the pool, so the pause lands before any face comes round again
DEFAULT_SEED = 12  # the domain the recipe was chosen on; another seed is a domain nobody tuned for
BASE_VERSION = "1.0.0"


# == the new camera ================================================================================


@dataclass(frozen=True)
class Placed:
    """Where the face of one generated frame is, and what it is."""

    row: int  # of x_val
    label: int
    box: tuple[int, int, int, int]  # the placed (upscaled, rotated) face square in the frame


def different_crop(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 46-54 px window of the face padded by reflection, shifted by up to 3 px: another camera's framing."""
    padded = cv2.copyMakeBorder(face, 6, 6, 6, 6, cv2.BORDER_REFLECT)
    window = int(rng.integers(46, 55))
    centre = (padded.shape[0] - window) // 2
    x, y = (int(np.clip(centre + rng.integers(-3, 4), 0, padded.shape[0] - window)) for _ in range(2))
    return padded[y:y + window, x:x + window]


def rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    side = image.shape[0]
    matrix = cv2.getRotationMatrix2D((side / 2, side / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def blurred_stretch(image: np.ndarray) -> np.ndarray:
    """``image`` blurred at 64x48 and stretched to the frame: an out-of-focus room, cheap to make."""
    small = cv2.GaussianBlur(cv2.resize(image.astype(np.float32), (64, 48), interpolation=cv2.INTER_AREA), (0, 0), 2.5)
    return cv2.resize(small, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_CUBIC)


def scene(face: np.ndarray, big: np.ndarray, position: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The face on a blurred stretch of itself, in quadrant ``position % 4``, edges feathered."""
    background = blurred_stretch(face)
    side = big.shape[0]
    cell_x, cell_y = (position % 2) * FRAME_WIDTH // 2, (position // 2 % 2) * FRAME_HEIGHT // 2
    x = cell_x + int(rng.integers(0, max(FRAME_WIDTH // 2 - side, 0) + 1))
    y = cell_y + int(rng.integers(0, max(FRAME_HEIGHT // 2 - side, 0) + 1))
    x, y = min(x, FRAME_WIDTH - side), min(y, FRAME_HEIGHT - side)
    mask = np.zeros((side, side), np.float32)
    mask[8:-8, 8:-8] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), 4)
    region = background[y:y + side, x:x + side]
    background[y:y + side, x:x + side] = mask * big + (1 - mask) * region
    return background, (x, y, side, side)


def low_light_noise_blur(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gain and gamma (a dim room), motion blur (a slow shutter), read and shot noise (a small sensor)."""
    gain, gamma = rng.uniform(0.45, 0.65), rng.uniform(1.3, 1.8)
    dim = 255.0 * gain * (np.clip(frame, 0, 255) / 255.0) ** gamma  # clip: cubic resizing overshoots a little
    length, angle = int(rng.integers(5, 12)), rng.uniform(0, 180)
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    kernel = cv2.warpAffine(kernel, cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle, 1.0), (length, length))
    blurred = cv2.filter2D(dim, -1, kernel / max(kernel.sum(), 1e-6))
    read_noise, shot = rng.uniform(3.0, 7.0), rng.uniform(0.5, 1.0)
    noisy = blurred + rng.normal(0, 1, blurred.shape) * np.sqrt(read_noise**2 + shot**2 * blurred)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def camera_frame(face: np.ndarray, position: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int], int]:
    """(BGR frame, placed face box, JPEG quality) of one FER face seen by the new camera."""
    side = int(rng.integers(160, 201))
    big = rotated(cv2.resize(different_crop(face, rng), (side, side), interpolation=cv2.INTER_CUBIC), rng.uniform(-8, 8))
    frame, box = scene(face, big.astype(np.float32), position, rng)
    grey = low_light_noise_blur(frame, rng)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), box, int(rng.integers(30, 51))


def write_frames(folder: Path, x: np.ndarray, y: np.ndarray, rows: np.ndarray, seed: int) -> list[Placed]:
    """One JPEG per face, named by position (the edge numbers a folder's frames in name order)."""
    folder.mkdir(parents=True)
    placed = []
    for position, row in enumerate(rows):
        rng = np.random.default_rng([seed, int(row)])
        frame, box, quality = camera_frame(x[row], position, rng)
        cv2.imwrite(str(folder / f"{position:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        placed.append(Placed(int(row), int(y[row]), box))
    return placed


def write_blank_frames(folder: Path, count: int, seed: int) -> None:
    """The empty scene after the pool: blurred noise in the same light."""
    rng = np.random.default_rng([seed, 999_999])
    for index in range(count):
        flat = blurred_stretch(rng.uniform(60, 200, (48, 64)))
        frame = low_light_noise_blur(flat, rng)
        cv2.imwrite(str(folder / f"z{index:04d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), [cv2.IMWRITE_JPEG_QUALITY, 40])


def vars_of(face: Placed) -> list[int]:
    return [face.row, face.label, *face.box]


def reuse_frames(kept: Path, work: Path, pool_rows: np.ndarray, held_rows: np.ndarray, seed: int) -> tuple[list[Placed], list[Placed]]:
    """The frames of a kept run of the same domain (same seed and rows: the same files), copied, not generated again."""
    placed = json.loads((kept / "placed.json").read_text())
    pool, held = ([Placed(row, label, tuple(box)) for row, label, *box in placed[part]] for part in ("pool", "held_out"))
    if placed["seed"] != seed or [face.row for face in pool] != pool_rows.tolist() or [face.row for face in held] != held_rows.tolist():
        raise SystemExit(f"--frames-from {kept}: another domain (seed or rows differ); generate the frames instead")
    for folder in ("pool", "held-out"):
        shutil.copytree(kept / folder, work / folder)
    return pool, held


def is_the_placed_face(box, placed: Placed) -> bool:
    """A detection is the face when its centre lies in the placed square and its size is near the square's."""
    x, y, width, height = box
    px, py, side, _ = placed.box
    centre_x, centre_y = x + width / 2, y + height / 2
    return px <= centre_x <= px + side and py <= centre_y <= py + side and 0.4 * side <= width <= 1.6 * side


# == the services ==================================================================================


@dataclass
class Services:
    work: Path
    pki: Path
    broker: MosquittoProcess
    database: str
    data_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
    webui: object | None = None
    monitor: MqttClient | None = None
    stats: Collector | None = None  # the edge's stats, from the first pass on

    @property
    def port(self) -> int:
        return self.broker.settings.tls_port

    def stop(self) -> None:
        if self.webui is not None:
            self.webui.stop()
        if self.monitor is not None:
            self.monitor.stop(announce_stopped=False, timeout=1)
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
        self.broker.stop()


def start_services(work: Path) -> Services:
    pki = work / "pki"
    init_pki(pki, devices=[DEVICE])
    settings = BrokerSettings(pki_dir=pki, state_dir=work / "broker", bind_address="127.0.0.1", tls_port=free_port(), password_port=None)
    broker = MosquittoProcess(settings).start()
    services = Services(work, pki, broker, f"sqlite:///{work / 'cloud' / 'emotion.db'}", work / "cloud" / "data")
    services.processes.append(start_ingest(ingest_env(pki, services.port, services.data_dir, services.database), work / "ingest.log"))
    services.webui = start_webui(webui_config(work, pki, services.port, store={"url": services.database, "data_dir": str(services.data_dir)}))
    services.monitor = MqttClient(pki_mqtt_settings(pki, "monitor", port=services.port, client_id=f"monitor-{uuid.uuid4().hex[:6]}")).start()
    if not services.monitor.wait_connected(30):
        raise RuntimeError(f"monitor cannot connect: {services.monitor.last_error}")
    return services


def subscribe(client: MqttClient, topic: str) -> Collector:
    collector = Collector()
    delivery = client.subscribe(topic, collector)
    if delivery is None or not delivery.wait(30):
        raise RuntimeError(f"no SUBACK for {topic}")
    return collector


def start_edge(services: Services, folder: Path, fps: float) -> subprocess.Popen:
    env = component_env("EMQ_EDGE__", {
        "DEVICE_ID": DEVICE, "PKI_DIR": services.pki, "DATA_DIR": services.work / "edge", "MQTT__HOST": "localhost",
        "MQTT__PORT": services.port, "PUBLISH__STATS_INTERVAL_S": 1, "SOURCE__IMAGE_FPS": fps,
        # Faces jump between quadrants: search the whole frame every time.
        "DETECTION__FULL_DETECT_EVERY_N": 1, "COMMANDS__ALLOWED": '["ping", "pause", "resume"]',
    })
    process = start_service("emq-edge", env, services.work / "edge.log", "--source", str(folder), "--loop")
    services.processes.append(process)
    return process


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def latest_stats(stats: Collector):
    messages = stats.on(Topics().stats(DEVICE))
    return parse_stats(messages[-1].payload) if messages else None


def collect_pool(services: Services, folder: Path, frames: int, fps: float, admin: HttpSession) -> float:
    """Run the edge over the pool once, pause it from the web UI, and wait until all its results are stored."""
    stats = subscribe(services.monitor, Topics().stats(DEVICE))
    started = time.monotonic()
    edge = start_edge(services, folder, fps)
    timeout = 300 + 3 * frames / fps

    def past_the_pool():
        if edge.poll() is not None:
            raise RuntimeError(f"the edge exited ({edge.returncode}): {(services.work / 'edge.log').read_text()[-2000:]}")
        current = latest_stats(stats)
        return current is not None and current.frames_processed >= frames + 5

    wait_for(past_the_pool, timeout, "the edge to pass the pool")
    reply = admin.post_json(f"/api/devices/{DEVICE}/commands", {"command": "pause"}, csrf=admin.csrf_token)
    if reply.status != 202:
        raise RuntimeError(f"pause: {reply.status} {reply.text}")
    wait_for(lambda: (current := latest_stats(stats)) is not None and current.paused and current.outbox_depth == 0, 300,
             "the paused edge's outbox to be stored")
    services.stats = stats
    return time.monotonic() - started


# == the store's faces ===============================================================================


@dataclass(frozen=True)
class StoredFace:
    face_id: int
    position: int
    box: tuple[int, int, int, int]


def pool_faces(database: str, frames: int) -> list[StoredFace]:
    """Faces the edge found in the pool's first pass, with the picture (frame position) each came from."""
    path = database.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as connection:
        rows = connection.execute(
            "SELECT f.id, r.frame_number, f.box_x, f.box_y, f.box_w, f.box_h FROM faces f JOIN results r ON r.id = f.result_id"
            " WHERE r.device_id = ? AND f.crop_png IS NOT NULL AND r.frame_number < ? ORDER BY f.id", (DEVICE, frames),
        ).fetchall()
    return [StoredFace(row[0], row[1], tuple(row[2:6])) for row in rows]


def label_faces(session: HttpSession, faces: list[StoredFace], placed: list[Placed]) -> None:
    for face in faces:
        label = EMOTIONS[placed[face.position].label]
        response = session.post_json("/api/labels", {"face_id": face.face_id, "label": label}, csrf=session.csrf_token)
        if response.status != 201:
            raise RuntimeError(f"label face {face.face_id}: {response.status} {response.text}")


# == retraining ======================================================================================


def retrain_env(services: Services, store: Path, exclude: Path, args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "EMQ_RETRAIN__DATABASE_URL": services.database,
        "EMQ_RETRAIN__MODEL_STORE": str(store),
        "EMQ_RETRAIN__CARD_DIR": str(services.work / "cards"),
        "EMQ_RETRAIN__PKI_DIR": str(services.pki),
        "EMQ_RETRAIN__MQTT__HOST": "localhost",
        "EMQ_RETRAIN__MQTT__PORT": str(services.port),
        "EMQ_RETRAIN__GATE__NONINFERIORITY_MARGIN": str(args.gate_margin),
        "EMQ_RETRAIN__TRAINING__EPOCHS": str(args.epochs),
        "EMQ_RETRAIN__TRAINING__TIME_BUDGET_S": str(args.time_budget),
        "EMQ_RETRAIN__TRAINING__LEARNING_RATE": str(args.learning_rate),
        "EMQ_RETRAIN__TRAINING__PATIENCE": str(args.patience),
        "EMQ_RETRAIN__TRAINING__LABEL_SMOOTHING": str(args.label_smoothing),
        "EMQ_RETRAIN__TRAINING__SCHEDULE": args.schedule,
        "EMQ_RETRAIN__TRAINING__WARMUP_EPOCHS": str(args.warmup_epochs if args.epochs > 1 else 0),
        "EMQ_RETRAIN__TRAINING__DISTILLATION": str(args.distillation),
        "EMQ_RETRAIN__TRAINING__FREEZE_BATCH_NORM": str(args.freeze_batch_norm).lower(),
        "EMQ_RETRAIN__TRAINING__EARLY_STOPPING_ON": args.early_stopping_on,
        "EMQ_RETRAIN__TRAINING__KEEP_LAST": str(args.keep_last).lower(),
        "EMQ_RETRAIN__TRAINING__BLEND": args.blend,
        "EMQ_RETRAIN__DATASET__COLLECTED_MIN_SHARE": str(args.collected_min_share),
        "EMQ_RETRAIN__DATASET__MIN_TRAIN_SAMPLES": "1",
        "EMQ_RETRAIN__DATASET__BASE_NPZ": str(FER2013),
        "EMQ_RETRAIN__DATASET__BASE_TRAIN_SAMPLES": str(args.base_train),
        "EMQ_RETRAIN__DATASET__BASE_SELECTION_SAMPLES": str(args.base_selection),
        "EMQ_RETRAIN__DATASET__BASE_GATE_EXCLUDE": str(exclude),
    })
    return env


def retrain(env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    job = subprocess.run([console_script("emq-retrain")], env=env, capture_output=True, text=True, timeout=3600)
    log.write_text(job.stdout + "\n--- stderr ---\n" + job.stderr)
    return job


def new_version(store: Path, known: set[str]) -> str | None:
    versions = set(ModelRegistry(store).versions()) - known
    return max(versions, key=lambda version: tuple(int(part) for part in version.split("."))) if versions else None


# == evaluation ======================================================================================


def held_out_crops(folder: Path, placed: list[Placed]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The held-out frames through the edge's detector and crop: (crops, labels, positions detected)."""
    from edge.perception.classifier import FaceClassifier
    from edge.perception.detector import FaceDetector, to_gray
    from edge.perception.settings import ClassificationSettings, DetectionSettings

    detector = FaceDetector(DetectionSettings(full_detect_every_n=1))
    cropper = FaceClassifier(lambda batch: batch, ClassificationSettings())
    crops, labels, positions = [], [], []
    for position, face in enumerate(placed):
        gray = to_gray(cv2.imread(str(folder / f"{position:05d}.jpg"), cv2.IMREAD_COLOR))
        boxes = [box for box in detector.detect_full(gray) if is_the_placed_face(box, face)]
        if boxes:
            crops.append(cropper.crops(gray, boxes[:1])[0])
            labels.append(face.label)
            positions.append(position)
    empty = np.zeros((0, 64, 64), np.uint8)
    return (np.stack(crops) if crops else empty), np.array(labels, np.int64), positions


def predictions(model_path: Path, faces: np.ndarray) -> np.ndarray:
    from runtime.preprocess import normalize_faces, resize_faces
    from runtime.tflite_runner import TFLiteEmotionModel

    model = TFLiteEmotionModel(model_path)
    batch = normalize_faces(resize_faces(faces))
    return np.concatenate([model.predict(batch[start:start + 256]).argmax(axis=1) for start in range(0, len(batch), 256)])


def accuracy(model_path: Path, faces: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions(model_path, faces) == labels)) if len(labels) else float("nan")


# == the run =========================================================================================


def split_domain(count: int, selection_rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x_val rows for the labelling pool and the held-out half (seeded, disjoint), in random order.

    Random order matters: x_val is stored class by class, and the job splits collected faces by time
    (the latest to the gate), so a camera that saw them in row order would gate on the last classes only.
    """
    rows = np.random.default_rng(seed).permutation(3589)[:count]
    pool, held_out = rows[: count // 2], rows[count // 2:]
    return pool, held_out[~np.isin(held_out, selection_rows)]


def run(args: argparse.Namespace) -> dict:
    timings: dict[str, float] = {}
    with np.load(FER2013) as arrays:
        x_val, y_val = arrays["x_val"], arrays["y_val"]
    _, selection_rows, _ = base_rows(28_709, len(y_val), args.base_train, args.base_selection, None)
    seed = args.seed
    pool_rows, held_rows = split_domain(args.faces, selection_rows, seed)
    work = Path(tempfile.mkdtemp(prefix="emq-loop-bench-"))
    print(f"work folder {work}; pool {len(pool_rows)} faces, held-out {len(held_rows)} (after leaving out FER2013 selection rows)", flush=True)

    started = time.monotonic()
    if args.frames_from is not None:
        pool_placed, held_placed = reuse_frames(args.frames_from, work, pool_rows, held_rows, seed)
        timings["copy_frames_s"] = time.monotonic() - started
    else:
        pool_placed = write_frames(work / "pool", x_val, y_val, pool_rows, seed)
        write_blank_frames(work / "pool", BLANK_FRAMES, seed)
        held_placed = write_frames(work / "held-out", x_val, y_val, held_rows, seed)
        timings["generate_frames_s"] = time.monotonic() - started
    (work / "placed.json").write_text(json.dumps({"seed": seed, "pool": [vars_of(face) for face in pool_placed],
                                                   "held_out": [vars_of(face) for face in held_placed]}))
    exclude = work / "pool-rows.npy"
    np.save(exclude, pool_rows)

    services = start_services(work)
    try:
        admin = HttpSession(services.webui.url)
        assert admin.log_in("admin").status == 302
        labeller = HttpSession(services.webui.url)
        assert labeller.log_in("lab").status == 302
        timings["edge_pass_to_store_s"] = collect_pool(services, work / "pool", len(pool_rows), args.fps, admin)
        stored = pool_faces(services.database, len(pool_rows))
        true_faces = [face for face in stored if is_the_placed_face(face.box, pool_placed[face.position])]
        pictures_found = len({face.position for face in true_faces})
        print(f"pool: {len(stored)} faces stored from the first pass, {len(true_faces)} of them the placed face "
              f"({pictures_found} of {len(pool_rows)} pictures)", flush=True)

        started = time.monotonic()
        crops, labels, positions = held_out_crops(work / "held-out", held_placed)
        timings["held_out_detect_s"] = time.monotonic() - started
        clean = x_val[held_rows]
        clean_labels = y_val[held_rows].astype(np.int64)
        job_store = work / "model-store"
        shutil.copytree(ModelRegistry().store, job_store)
        base_model = ModelRegistry(job_store).path_of(ModelRegistry(job_store).get(BASE_VERSION), "tflite")
        before_shifted, before_clean = accuracy(base_model, crops, labels), accuracy(base_model, clean, clean_labels)
        print(f"before: shifted held-out {before_shifted:.4f} ({len(labels)} faces), clean originals {before_clean:.4f}", flush=True)

        order = np.random.default_rng(seed + 1).permutation(len(true_faces))
        if args.keep:  # for bench/loop_experiments.py: which stored faces are labelled first, and their originals
            np.savez(work / "loop-data.npz", pool_rows=pool_rows, held_rows=held_rows,
                     face_ids=np.array([true_faces[index].face_id for index in order], np.int64),
                     positions=np.array([true_faces[index].position for index in order], np.int64))
        labelled = 0
        results = {
            "domain": {"seed": seed, "faces": int(args.faces), "pool_pictures": len(pool_rows), "held_out_pictures": len(held_rows),
                       "pool_faces_stored": len(stored), "pool_faces_detected": len(true_faces), "pool_pictures_detected": pictures_found,
                       "held_out_faces_detected": int(len(labels))},
            "before": {"shifted_held_out_top1": before_shifted, "clean_originals_top1": before_clean},
            "runs": [],
            "timings_s": timings,
        }
        for fraction in args.fractions:
            results["runs"].append(one_fraction(fraction, true_faces, order, labelled, labeller, pool_placed, services, job_store, exclude,
                                                args, (crops, labels), (clean, clean_labels), (before_shifted, before_clean)))
            labelled = results["runs"][-1]["labelled_faces"]
            if args.json:  # a long run's finished fractions survive an interruption
                args.json.write_text(json.dumps(dict(results, partial=True), indent=2) + "\n")
    finally:
        services.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return results


def one_fraction(fraction, true_faces, order, already, labeller, placed, services, job_store, exclude, args, shifted, clean, before) -> dict:
    wanted = int(round(fraction * len(true_faces)))
    started = time.monotonic()
    label_faces(labeller, [true_faces[index] for index in order[already:wanted]], placed)
    labelling_s = time.monotonic() - started

    registry = ModelRegistry(job_store)
    registry.set_current(BASE_VERSION)  # every fraction fine-tunes the base model
    known = set(registry.versions())
    started = time.monotonic()
    job = retrain(retrain_env(services, job_store, exclude, args), services.work / f"retrain-{fraction:g}.log")
    retrain_s = time.monotonic() - started
    version = new_version(job_store, known)
    print(f"fraction {fraction:g}: {wanted} labelled; emq-retrain exit {job.returncode} in {retrain_s:.0f} s; "
          f"{job.stdout.strip().splitlines()[-1] if job.stdout.strip() else job.stderr[-500:]}", flush=True)
    record = {"fraction": fraction, "labelled_faces": wanted, "retrain_exit": job.returncode, "version": version,
              "timings_s": {"labelling": labelling_s, "retrain": retrain_s}}
    if version is None:
        record["error"] = job.stderr[-2000:]
        return record
    card = json.loads((services.work / "cards" / version / "model-card.json").read_text())
    record["gate"] = {"decision": card["decision"], "reasons": card["gate"]["reasons"],
                      "collected": summary(card["gate"]["sets"].get("collected")), "fer2013": summary(card["gate"]["sets"].get("fer2013"))}
    training = card.get("training") or {}
    record["training"] = {key: training.get(key) for key in ("train_count", "epochs_run", "best_epoch", "monitored_set", "stopped_reason", "seconds")}
    record["data_counts"] = card.get("data_counts")
    if card["decision"] == "promoted":
        started = time.monotonic()
        wait_for(lambda: (stats := latest_stats(services.stats)) is not None and stats.model.version == version, 120,
                 f"the edge to report {version}")
        record["timings_s"]["release_to_edge"] = time.monotonic() - started
        record["edge_reported_version"] = version
    candidate = ModelRegistry(job_store).path_of(ModelRegistry(job_store).get(version), "tflite")
    after_shifted, after_clean = accuracy(candidate, *shifted), accuracy(candidate, *clean)
    record["shifted_held_out_top1"] = {"before": before[0], "after": after_shifted, "points": 100 * (after_shifted - before[0])}
    record["clean_originals_top1"] = {"before": before[1], "after": after_clean, "points": 100 * (after_clean - before[1])}
    print(f"  gate {card['decision']}; shifted {before[0]:.4f} -> {after_shifted:.4f}, clean {before[1]:.4f} -> {after_clean:.4f}", flush=True)
    return record


def summary(comparison: dict | None) -> dict | None:
    if comparison is None:
        return None
    keys = ("faces", "current_top1", "candidate_top1", "b_current_only_right", "c_candidate_only_right", "mcnemar_mid_p", "interval", "passed")
    return {key: comparison.get(key) for key in keys}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="shares of the pool's faces to label, increasing")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="the domain: split, camera transforms and labelling order (the recipe was chosen on the default)")
    parser.add_argument("--faces", type=int, default=3589, help="x_val faces in the domain (pool + held-out)")
    parser.add_argument("--fps", type=float, default=20.0, help="the edge's image_fps over the pool folder")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="cosine")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--time-budget", type=float, default=900.0, help="seconds of training per run at most")
    parser.add_argument("--base-train", type=int, default=5000, help="FER2013 training faces mixed in")
    parser.add_argument("--base-selection", type=int, default=300, help="FER2013 x_val faces for early stopping")
    parser.add_argument("--collected-min-share", type=float, default=0.25, help="repeat collected faces to this share of the mix")
    parser.add_argument("--distillation", type=float, default=0.5, help="weight of the base model's answers in FER2013 targets")
    parser.add_argument("--freeze-batch-norm", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--early-stopping-on", choices=("first", "mean"), default="first")
    parser.add_argument("--keep-last", action=argparse.BooleanOptionalAction, default=True, help="no early stopping: the last epoch")
    parser.add_argument("--blend", default="0.5", help="share of the fine-tuned weights (training.blend), or auto")
    parser.add_argument("--gate-margin", type=float, default=0.02,
                        help="non-inferiority margin on FER2013 (the product's default is 0.005; see the README)")
    parser.add_argument("--tiny", action="store_true", help="a fast smoke run: 120 faces, one epoch, one fraction")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (frames, logs, cards, the crops' order)")
    parser.add_argument("--frames-from", type=Path, help="a kept work folder of the same domain: copy its frames instead of generating them")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.faces, args.epochs, args.fractions, args.base_train, args.base_selection = 160, 1, [1.0], 200, 100
        args.fps, args.time_budget = 30.0, 120.0
    if sorted(args.fractions) != args.fractions or not all(0 < fraction <= 1 for fraction in args.fractions):
        parser.error("--fractions must be increasing shares in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not FER2013.exists():
        print(f"{FER2013} not found: the FER2013 arrays live in ../shared/data", file=sys.stderr)
        return 2
    started = time.monotonic()
    results = run(args)
    results["settings"] = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    results["timings_s"]["total"] = time.monotonic() - started
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
