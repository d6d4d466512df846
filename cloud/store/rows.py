"""The records the store hands out and takes in; readers build them from rows by column name."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from contract.emotions import EMOTIONS
from contract.messages import Result


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    first_seen: float
    last_seen: float
    status: str | None
    status_at: float | None
    last_seq: int | None
    model_version: str | None
    last_stats: dict | None

    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> "DeviceRow":
        stats = columns["last_stats"]
        return cls(**{**columns, "last_stats": json.loads(stats) if stats else None})


@dataclass(frozen=True)
class ResultRow:
    id: int
    msg_id: str
    device_id: str
    epoch: str | None
    seq: int
    captured_at: float
    received_at: float
    frame_number: int
    source: str
    model_version: str
    face_count: int
    top_label: str | None
    top_confidence: float | None

    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> "ResultRow":
        return cls(**columns)


@dataclass(frozen=True)
class FaceRow:
    id: int
    result_id: int
    device_id: str
    captured_at: float
    track_id: int
    label: str
    confidence: float
    probabilities: dict[str, float]
    box: tuple[int, int, int, int]
    model_version: str
    has_crop: bool
    human_label: str | None = None
    source: str | None = None  # None: seen by an edge device; else the tag of the import it came from
    content_sha256: str | None = None  # imported faces: SHA-256 of the crop's pixels

    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> "FaceRow":
        return cls(
            id=columns["id"], result_id=columns["result_id"], device_id=columns["device_id"],
            captured_at=columns["captured_at"], track_id=columns["track_id"], label=columns["label"],
            confidence=columns["confidence"], probabilities={name: columns[f"p_{name}"] for name in EMOTIONS},
            box=(columns["box_x"], columns["box_y"], columns["box_w"], columns["box_h"]),
            model_version=columns["model_version"], has_crop=bool(columns["has_crop"]),
            human_label=columns.get("human_label"), source=columns.get("source"),
            content_sha256=columns.get("content_sha256"),
        )


@dataclass(frozen=True)
class QuarantineRow:
    id: int
    received_at: float
    topic: str
    reason: str
    payload_size: int
    payload_head: bytes
    payload_sha256: str | None  # None on rows older than the digest column whose whole payload was not kept

    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> "QuarantineRow":
        return cls(**{**columns, "payload_head": bytes(columns["payload_head"])})


FRAMES_IN_FILES = "files"
FRAMES_IN_DATABASE = "database"


@dataclass(frozen=True)
class _FrameFacts:
    """What every frame record says about its frame; ``path`` is its unique name below the data folder."""

    device_id: str
    frame_number: int
    captured_at: float
    result_msg_id: str | None
    width: int
    height: int
    size_bytes: int
    path: str


@dataclass(frozen=True)
class NewFrame(_FrameFacts):
    """A frame to record. With ``jpeg`` set the bytes are kept in the database (no shared disk
    needed), else in the file ``path`` names."""

    jpeg: bytes | None = None

    @property
    def stored_in(self) -> str:
        return FRAMES_IN_FILES if self.jpeg is None else FRAMES_IN_DATABASE


@dataclass(frozen=True)
class FrameRow(_FrameFacts):
    """A stored frame: where its bytes are (``stored_in``: a file below the data folder, or the database)."""

    stored_in: str
    id: int

    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> "FrameRow":
        return cls(**columns)

    @property
    def in_database(self) -> bool:
        return self.stored_in == FRAMES_IN_DATABASE


@dataclass(frozen=True)
class NewResult:
    """A validated result ready to store: the decoded crop PNG per face, the JSON without pixels."""

    result: Result
    crops: list[bytes | None]
    document: str


@dataclass(frozen=True)
class ImportedFace:
    """A labelled face from outside the fleet (``emq-retrain import``), ready to store as a human-labelled crop."""

    source: str  # the import's tag (e.g. the folder's name)
    file_name: str  # the picture it came from, relative to the imported folder or CSV
    label: str  # the person's label, one of EMOTIONS
    labelled_by: str
    crop_png: bytes  # the 64x64 grey crop, as the edge cuts it
    content_sha256: str  # of the crop's pixels: the same face is stored once
    probabilities: tuple[float, ...]  # the current model's, in EMOTIONS order
    model_name: str
    model_version: str
    box: tuple[int, int, int, int]  # the face in the picture (the whole picture for a crop)
    width: int  # the picture's size
    height: int
    imported_at: float


def column_list(record: type, table_alias: str = "") -> str:
    """``SELECT`` list naming exactly the record's stored fields (so rows map back by name)."""
    prefix = f"{table_alias}." if table_alias else ""
    return ", ".join(f"{prefix}{field.name}" for field in fields(record))


RESULT_COLUMNS = column_list(ResultRow)
FRAME_COLUMNS = column_list(FrameRow)
QUARANTINE_COLUMNS = column_list(QuarantineRow)
DEVICE_COLUMNS = column_list(DeviceRow)
FACE_COLUMNS = (
    "f.id, f.result_id, f.device_id, f.captured_at, f.track_id, f.label, f.confidence, "
    + ", ".join(f"f.p_{name}" for name in EMOTIONS)
    + ", f.box_x, f.box_y, f.box_w, f.box_h, f.model_version, (f.crop_png IS NOT NULL) AS has_crop, f.source, f.content_sha256"
)
LATEST_LABEL = (
    "(SELECT l.label FROM labels l WHERE l.face_id = f.id ORDER BY l.labelled_at DESC, l.id DESC LIMIT 1) AS human_label"
)


def filters(device_id, label, since, until, label_column: str = "top_label") -> tuple[str, list]:
    """WHERE clause for the usual device / emotion / time-range filters (None = any)."""
    conditions = (("device_id = ?", device_id), (f"{label_column} = ?", label), ("captured_at >= ?", since), ("captured_at < ?", until))
    chosen = [(clause, value) for clause, value in conditions if value is not None]
    where = (" WHERE " + " AND ".join(clause for clause, _ in chosen)) if chosen else ""
    return where, [value for _, value in chosen]
