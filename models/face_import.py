"""Import labelled faces from outside the fleet into the cloud store, as human-labelled crops.

    emq-retrain import FOLDER          # FOLDER/<emotion>/<any image OpenCV reads>
    emq-retrain import --csv FILE      # rows: path,label (paths relative to the CSV's folder)

Each picture becomes one face, cut the way the edge cuts it (:mod:`runtime.faces`):

* a small, square-ish picture (at most ``max_crop_side`` px, sides within
  ``max_crop_aspect`` of each other) is taken to be a face crop already and
  only resized to 64x64;
* any other picture is searched with the edge's Haar detection and settings;
  the largest face is cropped with the edge's margin.

The current model classifies the crop (the store keeps, for every face, what
the model said as well as what a person said), and the face is stored with
its label, the import's source tag and the SHA-256 of its pixels, so the same
face is stored once however often it is imported.  Whatever goes wrong with
one file (unreadable, corrupt, no face, unknown label, already imported) is
reported and skipped; the import goes on and ends with a summary.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
from pydantic import Field

from cloud.store import ImportedFace, TrainingStore
from common.config import StrictSettings
from contract.emotions import EMOTIONS
from runtime.faces import CROP_MARGIN_X, CROP_MARGIN_Y, CROP_OFFSET_Y, Box, crop_face, find_faces, largest_box, load_cascade, to_gray
from runtime.preprocess import normalize_faces, resize_faces

log = logging.getLogger("models.face_import")

WRITE_BATCH = 100  # faces per transaction
Classify = Callable[[np.ndarray], np.ndarray]  # normalised (N, 64, 64, 1) -> (N, 7) probabilities


class ImportSettings(StrictSettings):
    """How a picture becomes a face (``RetrainConfig.face_import``); detection and crop defaults are the edge's own."""

    max_crop_side: Annotated[int, Field(ge=1)] = Field(default=96, description="Pictures at most this big and square-ish are face crops already.")
    max_crop_aspect: Annotated[float, Field(ge=1)] = Field(default=1.25, description="Longer side / shorter side of a square-ish picture.")
    scale_factor: Annotated[float, Field(gt=1, le=2)] = 1.1
    min_neighbors: Annotated[int, Field(ge=0, le=50)] = 3  # the edge's whole-frame search (calibrated on the face set)
    min_face_size: Annotated[int, Field(ge=1)] = 48
    max_face_size: Annotated[int, Field(ge=1)] | None = None
    detect_scale: Annotated[float, Field(gt=0, le=1)] = 0.5
    # The edge's calibrated crop (runtime.faces), so an imported face is framed like a collected one.
    crop_margin: Annotated[float, Field(ge=-0.2, le=1)] = CROP_MARGIN_X
    crop_margin_y: Annotated[float, Field(ge=-0.2, le=1)] | None = CROP_MARGIN_Y
    crop_offset_y: Annotated[float, Field(ge=-0.3, le=0.3)] = CROP_OFFSET_Y


@dataclass(frozen=True)
class ImportItem:
    """One picture to import and the label given for it (not yet checked)."""

    path: Path
    label: str
    name: str  # how the report and the store name it (relative to the folder or CSV)


class SkipFile(Exception):
    """This file cannot be imported; the message says why."""


@dataclass
class ImportReport:
    stored: list[tuple[str, int]] = field(default_factory=list)  # (file, face id)
    duplicates: list[tuple[str, int]] = field(default_factory=list)  # (file, id of the face already stored)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    labels: Counter = field(default_factory=Counter)  # stored faces per label

    def summary(self) -> str:
        per_label = ", ".join(f"{label} {count}" for label, count in sorted(self.labels.items())) or "none"
        return (
            f"{len(self.stored)} faces stored ({per_label}), {len(self.duplicates)} duplicates of stored faces, "
            f"{len(self.skipped)} files skipped"
        )


# -- what to import ------------------------------------------------------------------------------


def normalized_label(text: str) -> str | None:
    """The emotion a folder name or CSV cell names (case and surrounding space ignored), else None."""
    label = text.strip().lower()
    return label if label in EMOTIONS else None


def items_from_folder(folder: Path) -> tuple[list[ImportItem], list[tuple[str, str]]]:
    """Every file under ``folder/<emotion>/`` (recursively), and the files that are not under an emotion."""
    items: list[ImportItem] = []
    problems: list[tuple[str, str]] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        relative = path.relative_to(folder)
        if len(relative.parts) < 2:
            problems.append((str(relative), "not in a sub-folder named after an emotion"))
            continue
        items.append(ImportItem(path, relative.parts[0], str(relative)))
    return items, problems


def items_from_csv(csv_file: Path) -> tuple[list[ImportItem], list[tuple[str, str]]]:
    """Rows ``path,label`` (a header row ``path,label`` is allowed); relative paths are relative to the CSV."""
    items: list[ImportItem] = []
    problems: list[tuple[str, str]] = []
    with open(csv_file, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                problems.append((f"{csv_file.name} line {number}", f"expected path,label, got {len(row)} columns"))
                continue
            path_text, label = (cell.strip() for cell in row)
            if number == 1 and (path_text.lower(), label.lower()) == ("path", "label"):
                continue
            path = Path(path_text)
            items.append(ImportItem(path if path.is_absolute() else csv_file.parent / path, label, path_text))
    return items, problems


# -- one picture -> one crop ---------------------------------------------------------------------


def read_gray(path: Path) -> np.ndarray:
    """The picture as grey pixels, converted like the edge converts frames; SkipFile if OpenCV cannot read it."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise SkipFile(f"cannot read: {error.strerror or error}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise SkipFile("not an image OpenCV can decode (corrupt or unknown format)")
    return to_gray(image)


def is_face_crop(gray: np.ndarray, settings: ImportSettings) -> bool:
    """Small and square-ish: a face crop already (a FER2013-style 48x48, a 64x64 from the store, ...)."""
    height, width = gray.shape[:2]
    return max(height, width) <= settings.max_crop_side and max(height, width) <= settings.max_crop_aspect * min(height, width)


def face_of(gray: np.ndarray, settings: ImportSettings, cascade: cv2.CascadeClassifier) -> tuple[np.ndarray, Box]:
    """The 64x64 crop of the picture's face and its box in the picture; SkipFile without a face."""
    height, width = gray.shape[:2]
    if is_face_crop(gray, settings):
        return resize_faces([gray])[0], (0, 0, width, height)
    boxes = find_faces(
        gray, cascade, scale_factor=settings.scale_factor, min_neighbors=settings.min_neighbors,
        min_face_size=settings.min_face_size, max_face_size=settings.max_face_size, detect_scale=settings.detect_scale,
    )
    box = largest_box(boxes)
    if box is None:
        raise SkipFile(f"no face found in the {width}x{height} picture")
    return resize_faces([crop_face(gray, box, settings.crop_margin, settings.crop_margin_y, settings.crop_offset_y)])[0], box


def encode_png(crop: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", crop)
    if not ok:
        raise SkipFile("cannot encode the crop as PNG")
    return encoded.tobytes()


# -- the import ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportTarget:
    """Where and as what the faces are stored."""

    store: TrainingStore
    classify: Classify
    model_name: str
    model_version: str
    source: str
    labelled_by: str


def imported_face(item: ImportItem, target: ImportTarget, settings: ImportSettings, cascade: cv2.CascadeClassifier) -> ImportedFace:
    """One picture's face, ready to store; SkipFile when it cannot be imported."""
    label = normalized_label(item.label)
    if label is None:
        raise SkipFile(f"unknown label {item.label!r} (expected one of {', '.join(EMOTIONS)})")
    gray = read_gray(item.path)
    try:
        crop, box = face_of(gray, settings, cascade)
    except cv2.error as error:  # an image OpenCV decoded but cannot work on
        raise SkipFile(f"OpenCV cannot process it: {str(error).strip().splitlines()[-1]}") from None
    probabilities = np.asarray(target.classify(normalize_faces(crop[np.newaxis])), dtype=np.float64)[0]
    return ImportedFace(
        source=target.source, file_name=item.name, label=label, labelled_by=target.labelled_by,
        crop_png=encode_png(crop), content_sha256=hashlib.sha256(crop.tobytes()).hexdigest(),
        probabilities=tuple(float(value) for value in probabilities), model_name=target.model_name,
        model_version=target.model_version, box=box, width=gray.shape[1], height=gray.shape[0], imported_at=time.time(),
    )


def import_faces(items: Iterable[ImportItem], target: ImportTarget, settings: ImportSettings = ImportSettings(),
                 problems: Iterable[tuple[str, str]] = ()) -> ImportReport:
    """Import every item, never stopping for one bad file; ``problems`` found while listing are reported too.

    Faces are written ``WRITE_BATCH`` at a time: one transaction (one disk sync) each.
    """
    cascade = load_cascade(None)
    report = ImportReport(skipped=list(problems))
    batch: list[tuple[ImportItem, ImportedFace]] = []
    for item in items:
        try:
            batch.append((item, imported_face(item, target, settings, cascade)))
        except SkipFile as reason:
            report.skipped.append((item.name, str(reason)))
            log.warning("skipped %s: %s", item.name, reason)
        if len(batch) >= WRITE_BATCH:
            _store(batch, target.store, report)
            batch = []
    _store(batch, target.store, report)
    return report


def _store(batch: list[tuple[ImportItem, ImportedFace]], store: TrainingStore, report: ImportReport) -> None:
    if not batch:
        return
    outcomes = store.add_imported_faces([face for _, face in batch])
    for (item, face), (face_id, stored) in zip(batch, outcomes):
        if stored:
            report.stored.append((item.name, face_id))
            report.labels[face.label] += 1
        else:
            report.duplicates.append((item.name, face_id))
            log.info("%s: already stored as face %d", item.name, face_id)
