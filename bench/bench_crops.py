"""Face crops and flip TTA: what cutting faces out of real frames costs the emotion model, and the fix.

Run on one core (LiteRT uses 1 thread; the TTA timing assumes nothing else runs there)::

    taskset -c 0 python bench/bench_crops.py [--calibration 3000] [--test-limit N] [--json docs/bench-crops.json]

The model learnt from FER2013's tight 48x48 faces. On the edge a face is a Haar
box in a camera frame, cut out (``edge.perception.classifier``) and resized to
64x64, so the crop decides how much the model's input looks like its training
data. This benchmark measures it on FER2013 faces placed in realistic frames:

* **Frames.** Each face is enlarged to 60-250 px, rotated by up to +-10 degrees and
  blended into a 640x480 region of a real photo or video frame of ../shared/media
  (never over a face found there); then the whole frame gets a random gain,
  offset and a linear lighting gradient. FER2013 faces are tight crops: pasted
  bare, the cascade lacks the context around a face (hair, chin, cheeks' edges)
  and finds few of them, and the sharp paste edge is not a real border. So each face is
  first padded by half its side with its own reflection, blurred (sigma 5 px at
  48 px), that context fading into the background. The reflection continues the
  face's own grey levels and texture without adding a second sharp face; a
  crop reaching into it sees a soft, plausible surrounding, like a real crop
  wider than the face sees hair and background. Everything is drawn from a
  generator seeded by (seed, split, face index): the same face always gets the
  same frame, with any subset.
* **Pipeline.** The edge's own code: ``FaceDetector.detect_full`` with the
  default detection settings (what ``PerceptionPipeline.process`` runs on a
  new source), then ``FaceClassifier.classify`` with the crop under test and the
  shipped model from the store via ``runtime`` (LiteRT). A face counts as detected
  when a box overlaps its true 48 px square (scaled) with IoU >= 0.3; top-1 is on
  the detected faces; the reference is the same faces classified directly from
  their original 48x48 pixels (``runtime.preprocess``, as in training).
* **Calibration** on FER2013 *training* faces (never PublicTest): a staged sweep
  of margins (left/right, top/bottom, i.e. square or not) and vertical offset,
  all fractions of the face side; the best top-1 with the shipped TTA setting wins.
  Before/after are then reported on PublicTest.
* **Flip TTA**: top-1 on PublicTest (direct 48x48) with and without the mirror
  image averaged in, and the extra cost per face of ``FaceClassifier.classify``
  (crop, preprocessing, one LiteRT call on N or 2N faces) on one core.

Writes the figures as JSON (default docs/bench-crops.json); the crop it picks
is the default in ``edge.perception.settings.ClassificationSettings``
(tests/test_perception_crops.py checks that they agree).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))  # run as a script from anywhere, without installing the package

from edge.model import load_model  # noqa: E402
from edge.perception.boxes import Box, intersection_over_union  # noqa: E402
from edge.perception.classifier import FaceClassifier  # noqa: E402
from edge.perception.detector import FaceDetector  # noqa: E402
from edge.perception.settings import ClassificationSettings, DetectionSettings  # noqa: E402
from runtime.preprocess import normalize_faces, resize_faces  # noqa: E402

SHARED = REPOSITORY.parent / "shared"
DEFAULT_NPZ = SHARED / "data" / "fer2013_trainval.npz"
DEFAULT_MEDIA = SHARED / "media"
DEFAULT_JSON = REPOSITORY / "docs" / "bench-crops.json"

SEED = 20261203
CALIBRATION_SPLIT, TEST_SPLIT = 0, 1
FER_SIDE = 48
MATCH_IOU = 0.3
# The crop the edge used before this calibration: fer's 10 px around a ~125 px face, square, centred.
BEFORE = ClassificationSettings(crop_margin=0.08, crop_margin_y=None, crop_offset_y=0.0, flip_tta=False)
TARGET_GAP = 0.01
TTA_COST_LIMIT_MS = 0.5


@dataclass(frozen=True)
class FrameRecipe:
    """How a face is put into a frame; every random range is drawn per face."""

    frame_width: int = 640
    frame_height: int = 480
    face_side: tuple[int, int] = (60, 250)  # the 48 px face enlarged to this many pixels
    rotation_deg: float = 10.0  # uniform in +-this
    context_fraction: float = 0.5  # reflected border around the face, fraction of its side, each side
    context_blur_px: float = 5.0  # Gaussian sigma of the border, in 48 px face pixels
    gain: tuple[float, float] = (0.75, 1.25)
    offset: tuple[float, float] = (-15.0, 15.0)
    gradient: float = 0.25  # brightness change across one face side, uniform in +-this, random direction


RECIPE = FrameRecipe()


@dataclass
class Scene:
    frame: np.ndarray  # 640x480 grey
    truth: Box  # the pasted 48x48 face, scaled (axis-aligned, before rotation)


@dataclass(frozen=True)
class Background:
    gray: np.ndarray
    faces: tuple[Box, ...]  # faces the cascade finds in it, kept clear of pasted faces


# -- frames -------------------------------------------------------------------------------------


def load_backgrounds(media: Path, video_step: int = 10) -> list[list[Background]]:
    """Per source (each picture, each video), its grey frames: pictures whole, every ``video_step``-th video frame."""
    detector = FaceDetector(DetectionSettings(detect_scale=1.0, min_neighbors=3, min_face_size=24))
    sources = [[cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)] for path in sorted(media.glob("*.jpg"))]
    sources += [list(video_frames(video, video_step)) for video in sorted(media.glob("*.mp4"))]
    backgrounds = [[Background(image, tuple(detector.detect_full(image))) for image in images if image is not None]
                   for images in sources]
    backgrounds = [frames for frames in backgrounds if frames]
    if not backgrounds:
        raise SystemExit(f"no readable pictures or videos in {media}")
    return backgrounds


def video_frames(path: Path, step: int) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            if index % step == 0:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            index += 1
    finally:
        capture.release()


def scene_rng(split: int, index: int) -> np.random.Generator:
    """One generator per face: its frame does not depend on which other faces are drawn."""
    return np.random.default_rng((SEED, split, index))


def make_scene(face: np.ndarray, backgrounds: Sequence[Sequence[Background]], rng: np.random.Generator) -> Scene:
    """A face pasted into a real background at a random size, position and angle, then relit."""
    side = rng.uniform(*RECIPE.face_side)
    canvas, centre = place(side, backgrounds, rng)
    angle = rng.uniform(-RECIPE.rotation_deg, RECIPE.rotation_deg)
    frame = relight(paste_face(canvas, face, centre, side, angle), centre, side, rng)
    truth = (int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2)), int(round(side)), int(round(side)))
    return Scene(frame=frame, truth=truth)


def place(side: float, backgrounds: Sequence[Sequence[Background]], rng: np.random.Generator):
    """A background window (resized to the frame) and a face centre in it clear of the background's own faces.

    Windows and positions are redrawn first, the picture only when none fits, so sources with
    faces are not crowded out; after that many tries (a picture that is mostly face) the
    last draw is taken.
    """
    for _ in range(10):
        source = backgrounds[int(rng.integers(len(backgrounds)))]  # sources equally often, whatever their length
        background = source[int(rng.integers(len(source)))]
        for _ in range(20):
            window = background_window(background.gray.shape, rng)
            centre = face_centre(side, rng)
            if not covers_a_face(window_boxes(window, background.faces), centre, side):
                return window_pixels(background.gray, window), centre
    return window_pixels(background.gray, window), centre


def background_window(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[float, float, float]:
    """A random 4:3 window (left, top, scale to the frame) of a picture."""
    height, width = shape[:2]
    aspect = RECIPE.frame_width / RECIPE.frame_height
    max_width = min(width, height * aspect)
    window_width = rng.uniform(0.3, 1.0) * max_width
    left = rng.uniform(0, width - window_width)
    top = rng.uniform(0, height - window_width / aspect)
    return left, top, RECIPE.frame_width / window_width


def window_boxes(window: tuple[float, float, float], boxes: Iterable[Box]) -> list[tuple[float, float, float, float]]:
    left, top, scale = window
    return [((x - left) * scale, (y - top) * scale, w * scale, h * scale) for x, y, w, h in boxes]


def window_pixels(gray: np.ndarray, window: tuple[float, float, float]) -> np.ndarray:
    left, top, scale = window
    matrix = np.float32([[scale, 0, -left * scale], [0, scale, -top * scale]])
    return cv2.warpAffine(gray, matrix, (RECIPE.frame_width, RECIPE.frame_height), flags=cv2.INTER_LINEAR)


def face_centre(side: float, rng: np.random.Generator) -> tuple[float, float]:
    """A centre that keeps the face and a quarter of its side around it inside the frame."""
    reach = 0.75 * side
    return rng.uniform(reach, RECIPE.frame_width - reach), rng.uniform(reach, RECIPE.frame_height - reach)


def covers_a_face(faces: Iterable[tuple[float, float, float, float]], centre: tuple[float, float], side: float) -> bool:
    """Whether the pasted face with its context would overlap a face of the background."""
    half = side * (0.5 + RECIPE.context_fraction)
    left, top, right, bottom = centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half
    return any(x < right and x + w > left and y < bottom and y + h > top for x, y, w, h in faces)


def face_with_context(face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 48x48 face with a blurred reflected border (float32) and its blending weight (1 = opaque)."""
    pad = int(round(FER_SIDE * RECIPE.context_fraction))
    reflected = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REFLECT_101).astype(np.float32)
    blurred = cv2.GaussianBlur(reflected, (0, 0), RECIPE.context_blur_px)
    distance = distance_outside_face(reflected.shape[0], pad)
    sharpness = np.clip(distance / 3.0, 0.0, 1.0)  # the face itself stays sharp, the border blurs within 3 px
    patch = reflected * (1.0 - sharpness) + blurred * sharpness
    fade = np.clip(distance / pad, 0.0, 1.0)
    alpha = 1.0 - fade * fade * (3.0 - 2.0 * fade)  # smoothstep: opaque at the face, gone at the border's end
    return patch, alpha


def distance_outside_face(size: int, pad: int) -> np.ndarray:
    """Chessboard distance of each patch pixel from the face square (0 inside it)."""
    coordinates = np.arange(size, dtype=np.float32)
    outside = np.maximum(np.maximum(pad - coordinates, coordinates - (size - 1 - pad)), 0.0)
    return np.maximum(outside[:, None], outside[None, :])


def paste_face(canvas: np.ndarray, face: np.ndarray, centre: tuple[float, float], side: float, angle: float) -> np.ndarray:
    """The face with its context scaled to ``side``, rotated and blended into the canvas (float32)."""
    patch, alpha = face_with_context(face)
    patch_centre = (patch.shape[1] - 1) / 2.0
    matrix = cv2.getRotationMatrix2D((patch_centre, patch_centre), angle, side / FER_SIDE)
    # Only the square the rotated patch can reach is warped and blended: far cheaper than the frame.
    reach = int(np.ceil(side * (0.5 + RECIPE.context_fraction) * np.sqrt(2.0))) + 2
    left, top = max(int(centre[0]) - reach, 0), max(int(centre[1]) - reach, 0)
    right, bottom = min(int(centre[0]) + reach, canvas.shape[1]), min(int(centre[1]) + reach, canvas.shape[0])
    matrix[:, 2] += (centre[0] - patch_centre - left, centre[1] - patch_centre - top)
    size = (right - left, bottom - top)
    warped = cv2.warpAffine(patch, matrix, size, flags=cv2.INTER_LINEAR)
    weight = cv2.warpAffine(alpha, matrix, size, flags=cv2.INTER_LINEAR)
    frame = canvas.astype(np.float32)
    region = frame[top:bottom, left:right]
    frame[top:bottom, left:right] = region + (warped - region) * weight
    return frame


def relight(frame: np.ndarray, centre: tuple[float, float], side: float, rng: np.random.Generator) -> np.ndarray:
    """Global gain and offset and a linear brightness gradient in a random direction, as uint8."""
    gain = rng.uniform(*RECIPE.gain)
    offset = rng.uniform(*RECIPE.offset)
    slope = rng.uniform(-RECIPE.gradient, RECIPE.gradient) / side
    direction = rng.uniform(0, 2 * np.pi)
    columns, rows = pixel_coordinates(frame.shape[:2])
    along = (columns - centre[0]) * np.float32(np.cos(direction)) + (rows - centre[1]) * np.float32(np.sin(direction))
    factor = np.float32(gain) * (np.float32(1.0) + np.float32(slope) * along)
    return cv2.convertScaleAbs(frame * factor + np.float32(offset))  # rounds and saturates to 0..255


@functools.cache
def pixel_coordinates(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Column and row index of every pixel, float32 (made once per frame size)."""
    rows, columns = np.indices(shape, dtype=np.float32)
    return columns, rows


# -- detection ----------------------------------------------------------------------------------


def matching_box(boxes: Sequence[Box], truth: Box) -> Box | None:
    """The detection that overlaps the pasted face best, if any overlaps it enough."""
    scored = [(intersection_over_union(box, truth), box) for box in boxes]
    best = max(scored, default=(0.0, None))
    return best[1] if best[0] >= MATCH_IOU else None


@dataclass
class Split:
    """The faces of one split that the detector found in their frames."""

    name: str
    split: int
    faces: np.ndarray
    labels: np.ndarray
    indices: np.ndarray  # into faces, of those detected
    boxes: list[Box]
    total: int
    other_detections: int
    placement: np.ndarray  # per detected face: box centre x, y offset and side, relative to the true square; IoU

    @property
    def detection_rate(self) -> float:
        return len(self.indices) / self.total

    def scenes(self, backgrounds: Sequence[Sequence[Background]]) -> Iterator[tuple[int, Scene, Box]]:
        """The detected faces' frames again (regenerated: cheaper than keeping them), with their boxes."""
        for index, box in zip(self.indices, self.boxes):
            yield int(index), make_scene(self.faces[index], backgrounds, scene_rng(self.split, int(index))), box


def detect_split(name: str, split: int, faces: np.ndarray, labels: np.ndarray, backgrounds: Sequence[Sequence[Background]]) -> Split:
    detector = FaceDetector(DetectionSettings())
    indices: list[int] = []
    boxes: list[Box] = []
    placement: list[tuple[float, float, float, float]] = []
    others = 0
    for index, face in enumerate(faces):
        scene = make_scene(face, backgrounds, scene_rng(split, index))
        found = detector.detect_full(scene.frame)
        box = matching_box(found, scene.truth)
        others += len(found) - (box is not None)
        if box is not None:
            indices.append(index)
            boxes.append(box)
            placement.append(box_placement(box, scene.truth))
    return Split(name, split, faces, labels, np.asarray(indices, dtype=np.int64), boxes, len(faces), others,
                 np.asarray(placement))


def box_placement(box: Box, truth: Box) -> tuple[float, float, float, float]:
    """Where a Haar box lies on the face: centre offset (x, y) and side as fractions of the true side, and IoU."""
    side = truth[2]
    offset_x = (box[0] + box[2] / 2 - truth[0] - side / 2) / side
    offset_y = (box[1] + box[3] / 2 - truth[1] - side / 2) / side
    return offset_x, offset_y, box[2] / side, intersection_over_union(box, truth)


def placement_summary(split: Split) -> dict:
    """Median and 10th/90th percentiles of the box placement over the detected faces."""
    percentiles = np.percentile(split.placement, [10, 50, 90], axis=0)
    return {
        name: {"p10": float(percentiles[0, column]), "median": float(percentiles[1, column]), "p90": float(percentiles[2, column])}
        for column, name in enumerate(("centre_x", "centre_y", "side", "iou"))
    }


# -- classification -----------------------------------------------------------------------------


def direct_probabilities(model, faces: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of 48x48 faces classified as they are: plain, and averaged with their mirror images."""
    plain, averaged = [], []
    for start in range(0, len(faces), batch):
        resized = resize_faces(faces[start : start + batch])
        both = both_predictions(model, resized)
        plain.append(both[0])
        averaged.append(both[1])
    return np.concatenate(plain), np.concatenate(averaged)


@dataclass(frozen=True)
class Crop:
    margin_x: float
    margin_y: float
    offset_y: float

    def settings(self, flip_tta: bool = False) -> ClassificationSettings:
        return ClassificationSettings(
            crop_margin=self.margin_x, crop_margin_y=self.margin_y, crop_offset_y=self.offset_y, flip_tta=flip_tta
        )

    def key(self) -> str:
        return f"x{self.margin_x:+.2f} y{self.margin_y:+.2f} off{self.offset_y:+.2f}"


def sweep(model, split: Split, crops: Sequence[Crop], backgrounds: Sequence[Sequence[Background]], chunk: int = 16):
    """Top-1 of each crop on the detected faces of a split: (plain, with flip TTA) per crop."""
    classifiers = [FaceClassifier(model, crop.settings()) for crop in crops]
    plain_hits = np.zeros(len(crops), dtype=np.int64)
    tta_hits = np.zeros(len(crops), dtype=np.int64)
    scenes = list_in_chunks(split.scenes(backgrounds), chunk)
    for batch in scenes:
        labels = np.asarray([split.labels[index] for index, _, _ in batch])
        for position, classifier in enumerate(classifiers):
            faces = np.concatenate([classifier.crops(scene.frame, [box]) for _, scene, box in batch])
            plain, averaged = both_predictions(model, faces)
            plain_hits[position] += int((plain.argmax(1) == labels).sum())
            tta_hits[position] += int((averaged.argmax(1) == labels).sum())
    detected = len(split.indices)
    return {crop: (plain_hits[i] / detected, tta_hits[i] / detected) for i, crop in enumerate(crops)}


def both_predictions(model, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain and flip-averaged probabilities of 64x64 crops from one model call on 2N faces (as flip_tta does)."""
    normalized = normalize_faces(faces)
    both = model.predict(np.concatenate([normalized, normalized[:, :, ::-1, :]]))
    count = len(normalized)
    return both[:count], (both[:count] + both[count:]) / np.float32(2.0)


def list_in_chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def staged_sweep(model, split: Split, backgrounds: Sequence[Sequence[Background]], use_tta: bool) -> tuple[Crop, list[dict]]:
    """Square margins x offsets, then margins left/right x top/bottom, then finer offsets; best top-1 wins."""
    results: dict[Crop, tuple[float, float]] = {}
    pick = 1 if use_tta else 0

    def run(stage: str, crops: Iterable[Crop]) -> Crop:
        todo = [crop for crop in dict.fromkeys(crops) if crop not in results]
        started = time.perf_counter()
        results.update(sweep(model, split, todo, backgrounds))
        print(f"  {stage}: {len(todo)} crops in {time.perf_counter() - started:.0f} s", flush=True)
        return max(results, key=lambda crop: (results[crop][pick], -abs(crop.offset_y), -crop.margin_x))

    margins = (-0.06, -0.03, 0.0, 0.03, 0.06, 0.1, 0.15, 0.2)
    best = run("square margin x offset", (Crop(m, m, o) for m in margins for o in (-0.08, -0.04, 0.0, 0.04, 0.08)))
    near = [m for m in (-0.09, -0.06, -0.03, 0.0, 0.03, 0.06, 0.1, 0.15, 0.2) if abs(m - best.margin_x) <= 0.1]
    best = run("margin x by y", (Crop(mx, my, best.offset_y) for mx in near for my in near))
    offsets = [round(best.offset_y + step, 3) for step in (-0.03, -0.02, -0.01, 0.0, 0.01, 0.02, 0.03)]
    best = run("fine offset", (Crop(best.margin_x, best.margin_y, o) for o in offsets))
    table = [
        {**asdict(crop), "top1": plain, "top1_tta": averaged}
        for crop, (plain, averaged) in sorted(results.items(), key=lambda item: -item[1][pick])
    ]
    return best, table


def pipeline_hits(
    model, split: Split, settings: ClassificationSettings, backgrounds: Sequence[Sequence[Background]], use_truth: bool = False
) -> np.ndarray:
    """Per detected face, whether ``FaceClassifier.classify`` (the edge's own call, one frame at a time) is right.

    ``use_truth`` crops the pasted face's own square instead of the Haar box (same faces).
    """
    classifier = FaceClassifier(model, settings)
    hits = []
    for index, scene, box in split.scenes(backgrounds):
        probabilities, _ = classifier.classify(scene.frame, [scene.truth if use_truth else box])
        hits.append(probabilities[0].argmax() == split.labels[index])
    return np.asarray(hits)


# -- flip TTA cost ------------------------------------------------------------------------------


def classify_times_ms(classifier: FaceClassifier, scene: Scene, boxes: list[Box], repeats: int) -> list[float]:
    """Times of ``repeats`` calls of ``classify`` on a frame, per face, in ms."""
    classifier.classify(scene.frame, boxes)  # the first call after a batch size change resizes the interpreter
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        classifier.classify(scene.frame, boxes)
        times.append((time.perf_counter() - started) * 1000.0 / len(boxes))
    return times


def tta_cost(model, scene: Scene, box: Box, repeats: int, rounds: int = 10) -> dict:
    """Per-face time of ``classify`` with and without flip TTA, for frames of 1 and 4 faces.

    Plain and TTA alternate in ``rounds`` blocks of ``repeats`` calls. The cost is taken from
    each side's fastest call: on a shared machine a neighbour's burst only ever adds time, so
    the fastest call is the work itself; the best block medians are reported beside it.
    """
    costs = {}
    for faces in (1, 4):
        blocks: dict[bool, list[list[float]]] = {False: [], True: []}
        for _ in range(rounds):
            for flip_tta in (False, True):
                classifier = FaceClassifier(model, BEFORE.model_copy(update={"flip_tta": flip_tta}))
                blocks[flip_tta].append(classify_times_ms(classifier, scene, [box] * faces, repeats))
        fastest = {side: min(min(block) for block in blocks[side]) for side in blocks}
        median = {side: min(statistics.median(block) for block in blocks[side]) for side in blocks}
        costs[f"{faces}_faces"] = {
            "plain_ms_per_face": fastest[False], "tta_ms_per_face": fastest[True],
            "extra_ms_per_face": fastest[True] - fastest[False],
            "median_plain_ms_per_face": median[False], "median_tta_ms_per_face": median[True],
        }
    return costs


# -- report -------------------------------------------------------------------------------------


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(1) == labels).mean())


def comparison_rows(model, test: Split, chosen: Crop, backgrounds, direct_plain, direct_tta) -> list[dict]:
    """Before/after on the detected faces, each against the same faces classified directly (same TTA setting)."""
    detected_labels = test.labels[test.indices]
    direct_hits = {False: direct_plain[test.indices].argmax(1) == detected_labels,
                   True: direct_tta[test.indices].argmax(1) == detected_labels}
    rows = []
    for name, settings in (
        ("before: fer-like crop (margin 0.08, square, centred), no TTA", BEFORE),
        ("after: calibrated crop, no TTA", chosen.settings(flip_tta=False)),
        ("after: calibrated crop, flip TTA", chosen.settings(flip_tta=True)),
    ):
        hits = pipeline_hits(model, test, settings, backgrounds)
        rows.append(comparison_row(name, settings, hits, direct_hits[settings.flip_tta]))
    # What the frame alone costs (enlarging, rotation, lighting): the face's own square instead of the Haar box.
    exact = ClassificationSettings(crop_margin=0.0)
    hits = pipeline_hits(model, test, exact, backgrounds, use_truth=True)
    name = "reference: the pasted face's true square instead of the Haar box, no margin, no TTA"
    rows.append(comparison_row(name, exact, hits, direct_hits[False]))
    return rows


def comparison_row(name: str, settings: ClassificationSettings, hits: np.ndarray, direct_hits: np.ndarray) -> dict:
    """Top-1 both ways on the same faces, the gap, and its standard error (paired: only disagreements count)."""
    count = len(hits)
    difference = direct_hits.astype(np.float64) - hits.astype(np.float64)
    return {
        "crop": name, "settings": settings.model_dump(), "detected": count,
        "pipeline_top1": float(hits.mean()), "direct_top1_same_faces": float(direct_hits.mean()),
        "gap": float(difference.mean()), "gap_standard_error": float(difference.std(ddof=1) / np.sqrt(count)),
    }


def print_report(report: dict) -> None:
    test = report["test"]
    print(f"\nPublicTest: {test['detected']} of {test['faces']} faces detected ({test['detection_rate']:.1%}), "
          f"{test['other_detections']} other detections; direct top-1 on all {test['faces']}: "
          f"{test['direct_top1_all']:.2%} (flip TTA {test['direct_top1_all_tta']:.2%})")
    print(f"{'crop':86} {'pipeline':>9} {'direct':>8} {'gap':>16}")
    for row in report["comparison"]:
        print(f"{row['crop']:86} {row['pipeline_top1']:9.2%} {row['direct_top1_same_faces']:8.2%} "
              f"{row['gap'] * 100:+6.2f} +- {row['gap_standard_error'] * 100:.2f}p")
    placement = test["box_placement"]
    print("Haar box on the true square (p10 / median / p90): " + ", ".join(
        f"{name} {values['p10']:+.3f} / {values['median']:+.3f} / {values['p90']:+.3f}" for name, values in placement.items()))
    chosen = report["chosen"]
    print(f"chosen crop: margin_x {chosen['margin_x']}, margin_y {chosen['margin_y']}, offset_y {chosen['offset_y']}")
    for faces, cost in report["flip_tta"]["cost"].items():
        print(f"flip TTA, {faces.replace('_', ' ')}: {cost['plain_ms_per_face']:.3f} -> {cost['tta_ms_per_face']:.3f} ms "
              f"per face (+{cost['extra_ms_per_face']:.3f}; best block medians {cost['median_plain_ms_per_face']:.3f} -> "
              f"{cost['median_tta_ms_per_face']:.3f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA)
    parser.add_argument("--calibration", type=int, default=3000, help="training faces to calibrate on")
    parser.add_argument("--test-limit", type=int, default=None, help="first N PublicTest faces only (default all)")
    parser.add_argument("--sweep-without-tta", action="store_true", help="pick the crop by top-1 without flip TTA")
    parser.add_argument("--repeats", type=int, default=100, help="classify calls per timing block")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    arguments = parser.parse_args()

    data = np.load(arguments.npz)
    model = load_model(None, None, num_threads=1)
    backgrounds = load_backgrounds(arguments.media)
    calibration_order = np.random.default_rng((SEED, CALIBRATION_SPLIT)).permutation(len(data["x_train"]))
    calibration_indices = np.sort(calibration_order[: arguments.calibration])
    test_faces, test_labels = data["x_val"][: arguments.test_limit], data["y_val"][: arguments.test_limit]

    started = time.perf_counter()
    calibration = detect_split("calibration", CALIBRATION_SPLIT, data["x_train"][calibration_indices],
                               data["y_train"][calibration_indices], backgrounds)
    print(f"calibration: {len(calibration.indices)} of {calibration.total} training faces detected "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    chosen, sweep_table = staged_sweep(model, calibration, backgrounds, use_tta=not arguments.sweep_without_tta)
    test = detect_split("PublicTest", TEST_SPLIT, test_faces, test_labels, backgrounds)
    direct_plain, direct_tta = direct_probabilities(model, test_faces)
    first_index, first_scene, first_box = next(test.scenes(backgrounds))
    report = {
        "command": "taskset -c 0 python bench/bench_crops.py " + " ".join(sys.argv[1:]),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "model": {"name": model.name, "version": model.version},
        "seed": SEED,
        "frame_recipe": asdict(RECIPE),
        "match_iou": MATCH_IOU,
        "calibration": {
            "split": "FER2013 Training", "faces": calibration.total, "detected": len(calibration.indices),
            "detection_rate": calibration.detection_rate, "box_placement": placement_summary(calibration), "picked_by": "top1" if arguments.sweep_without_tta else "top1_tta",
            "sweep": sweep_table,
        },
        "chosen": asdict(chosen),
        "test": {
            "split": "FER2013 PublicTest", "faces": test.total, "detected": len(test.indices),
            "detection_rate": test.detection_rate, "other_detections": test.other_detections,
            "box_placement": placement_summary(test),
            "direct_top1_all": accuracy(direct_plain, test_labels), "direct_top1_all_tta": accuracy(direct_tta, test_labels),
        },
        "comparison": comparison_rows(model, test, chosen, backgrounds, direct_plain, direct_tta),
        "flip_tta": {
            "direct_top1": accuracy(direct_plain, test_labels), "direct_top1_tta": accuracy(direct_tta, test_labels),
            "gain": accuracy(direct_tta, test_labels) - accuracy(direct_plain, test_labels),
            "cost": tta_cost(model, first_scene, first_box, arguments.repeats), "cost_limit_ms": TTA_COST_LIMIT_MS,
        },
        "target_gap": TARGET_GAP,
        "seconds": time.perf_counter() - started,
    }
    print_report(report)
    arguments.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {arguments.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
