"""The cloud store: every result, face, frame, label and quarantined message, behind one interface.

Writers (the ingest service) and readers (web UI, retraining job) share this
class; it works on SQLite and PostgreSQL alike (:mod:`cloud.db`). Frames are
JPEG files under the data folder (rows hold their paths relative to it, so
the folder can move); the 64x64 face crops (~4 KB PNG) live in the database
itself, which is several times faster than one file each and keeps a crop
and its labels in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Iterable

from cloud.db import QUARANTINE_HEAD_BYTES, Database
from contract.emotions import EMOTIONS
from contract.messages import Result

_FRAMES_PER_STATEMENT = 1000  # 9 parameters each: well inside SQLite's limit on bound parameters
PROBABILITY_COLUMNS = ", ".join(f"p_{name}" for name in EMOTIONS)


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


@dataclass(frozen=True)
class ResultRow:
    id: int
    msg_id: str
    device_id: str
    seq: int
    captured_at: float
    received_at: float
    frame_number: int
    source: str
    model_version: str
    face_count: int
    top_label: str | None
    top_confidence: float | None


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


@dataclass(frozen=True)
class QuarantineRow:
    id: int
    received_at: float
    topic: str
    reason: str
    payload_size: int
    payload_head: bytes
    payload_sha256: str | None  # None on rows older than the digest column whose whole payload was not kept


@dataclass(frozen=True)
class NewFrame:
    """A frame file to record; ``path`` is relative to the data folder."""

    device_id: str
    frame_number: int
    captured_at: float
    result_msg_id: str | None
    width: int
    height: int
    size_bytes: int
    path: str


@dataclass(frozen=True)
class FrameRow(NewFrame):
    """A stored frame: the same record plus its row id."""

    id: int


_FRAME_COLUMNS = "device_id, frame_number, captured_at, result_msg_id, width, height, size_bytes, path, id"
_QUARANTINE_COLUMNS = "id, received_at, topic, reason, payload_size, payload_head, payload_sha256"


@dataclass(frozen=True)
class NewResult:
    """A validated result ready to store: the decoded crop PNG per face, the JSON without pixels."""

    result: Result
    crops: list[bytes | None]
    document: str


def _result_values(item: NewResult, received_at: float) -> tuple:
    result, top = item.result, item.result.top
    return (
        result.msg_id, result.device_id, result.epoch, result.seq, result.captured_epoch, received_at, result.frame_number,
        result.source, result.model.name, result.model.version, len(result.faces),
        top.label if top else None, top.confidence if top else None, item.document,
    )


def _distinct_results(items: list[NewResult]) -> list[NewResult]:
    """The first of each msg_id and of each (device, epoch, seq) within one batch."""
    seen: set = set()
    distinct = []
    for item in items:
        result = item.result
        keys = (result.msg_id, (result.device_id, result.epoch, result.seq))
        if keys[0] in seen or keys[1] in seen:
            continue
        seen.update(keys)
        distinct.append(item)
    return distinct


def _face_values(result_id: int, item: NewResult) -> list[tuple]:
    result = item.result
    captured_at = result.captured_epoch
    return [
        (
            result_id, index, result.device_id, captured_at, face.track_id, face.label, face.confidence,
            *face.probabilities.as_tuple(), face.box.x, face.box.y, face.box.w, face.box.h,
            result.model.version, item.crops[index],
        )
        for index, face in enumerate(result.faces)
    ]


_RESULT_COLUMNS = "id, msg_id, device_id, seq, captured_at, received_at, frame_number, source, model_version, face_count, top_label, top_confidence"
_FACE_COLUMNS = f"f.id, f.result_id, f.device_id, f.captured_at, f.track_id, f.label, f.confidence, {', '.join('f.p_' + name for name in EMOTIONS)}, f.box_x, f.box_y, f.box_w, f.box_h, f.model_version, (f.crop_png IS NOT NULL)"
_LATEST_LABEL = "(SELECT l.label FROM labels l WHERE l.face_id = f.id ORDER BY l.labelled_at DESC, l.id DESC LIMIT 1)"


def _face_row(row: tuple, human_label: str | None = None) -> FaceRow:
    probabilities = dict(zip(EMOTIONS, row[7:14]))
    return FaceRow(
        id=row[0], result_id=row[1], device_id=row[2], captured_at=row[3], track_id=row[4], label=row[5],
        confidence=row[6], probabilities=probabilities, box=tuple(row[14:18]), model_version=row[18],
        has_crop=bool(row[19]), human_label=human_label,
    )


def _filters(device_id, label, since, until, label_column: str = "top_label") -> tuple[str, list]:
    """WHERE clause for the usual device / emotion / time-range filters (None = any)."""
    conditions = (("device_id = ?", device_id), (f"{label_column} = ?", label), ("captured_at >= ?", since), ("captured_at < ?", until))
    chosen = [(clause, value) for clause, value in conditions if value is not None]
    where = (" WHERE " + " AND ".join(clause for clause, _ in chosen)) if chosen else ""
    return where, [value for _, value in chosen]


class Store:
    def __init__(self, url: str) -> None:
        self.db = Database(url)

    def close(self) -> None:
        self.db.close()

    def transaction(self):
        return self.db.transaction()

    # == writes (ingest) ================================================================
    def add_result(self, result: Result, received_at: float, crops: list[bytes | None], document: str) -> bool:
        """Store one result and its faces; False if this msg_id was stored before (a redelivery)."""
        return self.add_results([NewResult(result, crops, document)], received_at) == 1

    def add_results(self, items: list["NewResult"], received_at: float) -> int:
        """Store results and their faces in a few statements; returns how many were new.

        One multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING`` tells exactly
        which rows this transaction created, even with concurrent workers, so
        faces are never stored twice for a redelivered result.
        """
        unique = _distinct_results(items)
        if not unique:
            return 0
        placeholders = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(unique))
        parameters = [value for item in unique for value in _result_values(item, received_at)]
        # No conflict target: a known msg_id (a redelivery) and a known (device, epoch, seq) are both skipped.
        created = dict(self.db.query(
            "INSERT INTO results (msg_id, device_id, epoch, seq, captured_at, received_at, frame_number, source, model_name,"
            f" model_version, face_count, top_label, top_confidence, document) VALUES {placeholders}"
            " ON CONFLICT DO NOTHING RETURNING msg_id, id",
            parameters,
        ))
        face_rows = [row for item in unique if item.result.msg_id in created for row in _face_values(created[item.result.msg_id], item)]
        self.db.executemany(
            "INSERT INTO faces (result_id, face_index, device_id, captured_at, track_id, label, confidence,"
            f" {PROBABILITY_COLUMNS}, box_x, box_y, box_w, box_h, model_version, crop_png)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            face_rows,
        )
        return len(created)

    def touch_device(self, device_id: str, seen_at: float, seq: int | None = None, model_version: str | None = None) -> None:
        """Record that a device was heard from (once per batch, not per message)."""
        self._touch_device(device_id, seen_at, seq, model_version)

    def _touch_device(self, device_id: str, seen_at: float, seq: int | None = None, model_version: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO devices (device_id, first_seen, last_seen, last_seq, model_version) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (device_id) DO UPDATE SET last_seen = excluded.last_seen,"
            " last_seq = COALESCE(excluded.last_seq, devices.last_seq),"
            " model_version = COALESCE(excluded.model_version, devices.model_version)",
            (device_id, seen_at, seen_at, seq, model_version),
        )

    # == delivery marks (what the edge may forget) =====================================
    def advance_marks(self, epochs: Iterable[tuple[str, str]], at: float | None = None) -> dict[tuple[str, str], int]:
        """For each (device, epoch): the highest seq with 0..seq all stored, saved and returned.

        Computed from the committed results, so every worker's commits count
        (each worker calls this after its own commit; the saved mark only grows).
        A pair whose seq 0 is not stored yet is left out.
        """
        marks = {}
        for device_id, epoch in epochs:
            mark = self._contiguous_seq(device_id, epoch)
            if mark is None:
                continue
            self.db.execute(
                "INSERT INTO delivery_marks (device_id, epoch, seq, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (device_id, epoch) DO UPDATE SET updated_at = excluded.updated_at,"
                " seq = CASE WHEN excluded.seq > delivery_marks.seq THEN excluded.seq ELSE delivery_marks.seq END",
                (device_id, epoch, mark, at or time.time()),
            )
            marks[(device_id, epoch)] = self.db.scalar(
                "SELECT seq FROM delivery_marks WHERE device_id = ? AND epoch = ?", (device_id, epoch)
            )
        return marks

    def _contiguous_seq(self, device_id: str, epoch: str, chunk: int = 2000) -> int | None:
        """Walk the stored seqs upwards from the saved mark until the first gap."""
        mark = self.db.scalar("SELECT seq FROM delivery_marks WHERE device_id = ? AND epoch = ?", (device_id, epoch))
        mark = -1 if mark is None else mark
        while True:
            seqs = [row[0] for row in self.db.query(
                "SELECT seq FROM results WHERE device_id = ? AND epoch = ? AND seq > ? ORDER BY seq LIMIT ?",
                (device_id, epoch, mark, chunk),
            )]
            for seq in seqs:
                if seq != mark + 1:
                    return mark if mark >= 0 else None
                mark = seq
            if len(seqs) < chunk:
                return mark if mark >= 0 else None

    def delivery_mark(self, device_id: str, epoch: str) -> int | None:
        return self.db.scalar("SELECT seq FROM delivery_marks WHERE device_id = ? AND epoch = ?", (device_id, epoch))

    def set_device_status(self, device_id: str, status: str, at: float) -> None:
        self._touch_device(device_id, at)
        self.db.execute("UPDATE devices SET status = ?, status_at = ? WHERE device_id = ?", (status, at, device_id))

    def set_device_stats(self, device_id: str, stats_json: str, at: float) -> None:
        self._touch_device(device_id, at)
        self.db.execute("UPDATE devices SET last_stats = ?, stats_at = ? WHERE device_id = ?", (stats_json, at, device_id))

    def add_frame(self, frame: NewFrame, received_at: float) -> int:
        return self.add_frames([frame], received_at)

    def add_frames(self, frames: list[NewFrame], received_at: float) -> int:
        """Record frame files; returns how many rows are new (a redelivered frame has the same path)."""
        created = 0
        for start in range(0, len(frames), _FRAMES_PER_STATEMENT):
            chunk = frames[start:start + _FRAMES_PER_STATEMENT]
            placeholders = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
            parameters = [value for frame in chunk for value in (
                frame.device_id, frame.frame_number, frame.captured_at, received_at, frame.result_msg_id,
                frame.width, frame.height, frame.size_bytes, frame.path)]
            created += len(self.db.query(
                "INSERT INTO frames (device_id, frame_number, captured_at, received_at, result_msg_id, width, height, size_bytes, path)"
                f" VALUES {placeholders} ON CONFLICT (path) DO NOTHING RETURNING id",
                parameters,
            ))
        return created

    def result_devices(self, msg_ids: Iterable[str]) -> dict[str, str]:
        """msg_id -> device_id of the stored results among ``msg_ids`` (to check a frame's claimed link)."""
        wanted = list(set(msg_ids))
        if not wanted:
            return {}
        placeholders = ", ".join(["?"] * len(wanted))
        return dict(self.db.query(f"SELECT msg_id, device_id FROM results WHERE msg_id IN ({placeholders})", wanted))

    def quarantine(self, topic: str, reason: str, payload: bytes, received_at: float | None = None) -> None:
        self.quarantine_many([(topic, reason, payload)], received_at)

    def quarantine_many(self, rejected: list[tuple[str, str, bytes]], received_at: float | None = None) -> None:
        """Record rejected messages (topic, reason, payload): the first bytes (enough to see what it
        was), the size and a SHA-256 of the payload. Never the whole payload: a flood of large bad
        messages must not fill the disk (a row is at most ~2 KB)."""
        at = received_at or time.time()
        self.db.executemany(
            "INSERT INTO quarantine (received_at, topic, reason, payload_size, payload_sha256, payload_head) VALUES (?, ?, ?, ?, ?, ?)",
            [(at, topic[:512], reason[:1000], len(payload), hashlib.sha256(payload).hexdigest(), bytes(payload[:QUARANTINE_HEAD_BYTES]))
             for topic, reason, payload in rejected],
        )

    # == labels ===========================================================================
    def add_label(self, face_id: int, label: str, labelled_by: str, at: float | None = None) -> None:
        if label not in EMOTIONS:
            raise ValueError(f"unknown emotion {label!r}")
        if self.db.scalar("SELECT COUNT(*) FROM faces WHERE id = ?", (face_id,)) == 0:
            raise LookupError(f"no face {face_id}")
        self.db.execute(
            "INSERT INTO labels (face_id, label, labelled_by, labelled_at) VALUES (?, ?, ?, ?)",
            (face_id, label, labelled_by[:64], at or time.time()),
        )

    def label_queue(self, limit: int = 50, device_id: str | None = None) -> list[FaceRow]:
        """Faces with a crop and no human label yet, least confident first."""
        where, parameters = ("AND f.device_id = ?", [device_id]) if device_id else ("", [])
        rows = self.db.query(
            f"SELECT {_FACE_COLUMNS} FROM faces f WHERE f.crop_png IS NOT NULL"
            f" AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.face_id = f.id) {where}"
            " ORDER BY f.confidence ASC, f.id ASC LIMIT ?",
            (*parameters, limit),
        )
        return [_face_row(row) for row in rows]

    def label_progress(self) -> tuple[int, int]:
        """(faces labelled by a person, faces with a crop)."""
        labelled = self.db.scalar("SELECT COUNT(DISTINCT face_id) FROM labels")
        with_crop = self.db.scalar("SELECT COUNT(*) FROM faces WHERE crop_png IS NOT NULL")
        return labelled, with_crop

    def training_faces(self, min_confidence: float | None = None) -> list[FaceRow]:
        """Faces with crops for retraining: the human label where there is one, else (optionally) confident model labels."""
        rows = self.db.query(
            f"SELECT {_FACE_COLUMNS}, {_LATEST_LABEL} FROM faces f WHERE f.crop_png IS NOT NULL ORDER BY f.captured_at, f.id"
        )
        faces = [_face_row(row[:20], human_label=row[20]) for row in rows]
        if min_confidence is None:
            return [face for face in faces if face.human_label]
        return [face for face in faces if face.human_label or face.confidence >= min_confidence]

    # == reads ============================================================================
    def devices(self) -> list[DeviceRow]:
        rows = self.db.query(
            "SELECT device_id, first_seen, last_seen, status, status_at, last_seq, model_version, last_stats FROM devices ORDER BY device_id"
        )
        return [DeviceRow(*row[:7], json.loads(row[7]) if row[7] else None) for row in rows]

    def results(self, device_id=None, label=None, since=None, until=None, limit: int = 50, offset: int = 0) -> list[ResultRow]:
        where, parameters = _filters(device_id, label, since, until)
        rows = self.db.query(
            f"SELECT {_RESULT_COLUMNS} FROM results{where} ORDER BY captured_at DESC, id DESC LIMIT ? OFFSET ?",
            (*parameters, limit, offset),
        )
        return [ResultRow(*row) for row in rows]

    def count_results(self, device_id=None, label=None, since=None, until=None) -> int:
        where, parameters = _filters(device_id, label, since, until)
        return self.db.scalar(f"SELECT COUNT(*) FROM results{where}", parameters)

    def result(self, result_id: int) -> tuple[ResultRow, list[FaceRow]] | None:
        rows = self.db.query(f"SELECT {_RESULT_COLUMNS} FROM results WHERE id = ?", (result_id,))
        if not rows:
            return None
        faces = self.db.query(f"SELECT {_FACE_COLUMNS}, {_LATEST_LABEL} FROM faces f WHERE f.result_id = ? ORDER BY f.face_index", (result_id,))
        return ResultRow(*rows[0]), [_face_row(row[:20], human_label=row[20]) for row in faces]

    def result_by_msg_id(self, msg_id: str) -> ResultRow | None:
        rows = self.db.query(f"SELECT {_RESULT_COLUMNS} FROM results WHERE msg_id = ?", (msg_id,))
        return ResultRow(*rows[0]) if rows else None

    def face(self, face_id: int) -> FaceRow | None:
        rows = self.db.query(f"SELECT {_FACE_COLUMNS}, {_LATEST_LABEL} FROM faces f WHERE f.id = ?", (face_id,))
        return _face_row(rows[0][:20], human_label=rows[0][20]) if rows else None

    def frame_for_result(self, msg_id: str) -> FrameRow | None:
        """The frame of a result: only one from the result's own device (a frame's link is its device's claim)."""
        rows = self.db.query(
            f"SELECT {_FRAME_COLUMNS} FROM frames WHERE result_msg_id = ?"
            " AND device_id = (SELECT r.device_id FROM results r WHERE r.msg_id = ?) ORDER BY id LIMIT 1",
            (msg_id, msg_id),
        )
        return FrameRow(*rows[0]) if rows else None

    def emotion_share(self, device_id: str | None, since: float, until: float, bucket_s: int) -> list[tuple[float, str, int]]:
        """(bucket start, label, faces) for a stacked chart of emotions over time."""
        where, parameters = _filters(device_id, None, since, until)
        rows = self.db.query(
            f"SELECT CAST(captured_at / ? AS BIGINT) * ? AS bucket, label, COUNT(*) FROM faces{where}"
            " GROUP BY bucket, label ORDER BY bucket, label",
            (bucket_s, bucket_s, *parameters),
        )
        return [(float(bucket), label, count) for bucket, label, count in rows]

    def quarantined(self, limit: int = 100) -> list[QuarantineRow]:
        rows = self.db.query(f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine ORDER BY id DESC LIMIT ?", (limit,))
        return [QuarantineRow(*row[:5], bytes(row[5]), row[6]) for row in rows]

    def counts(self) -> dict[str, int]:
        tables = ("results", "faces", "frames", "labels", "quarantine", "devices")
        return {table: self.db.scalar(f"SELECT COUNT(*) FROM {table}") for table in tables}

    # == retention ========================================================================
    def frames_older_than(self, before: float, limit: int = 1000) -> list[FrameRow]:
        rows = self.db.query(
            f"SELECT {_FRAME_COLUMNS} FROM frames WHERE received_at < ? ORDER BY id LIMIT ?",
            (before, limit),
        )
        return [FrameRow(*row) for row in rows]

    def frame_bytes_by_device(self) -> dict[str, int]:
        return dict(self.db.query("SELECT device_id, COALESCE(SUM(size_bytes), 0) FROM frames GROUP BY device_id"))

    def oldest_frames(self, device_id: str, limit: int) -> list[FrameRow]:
        rows = self.db.query(
            f"SELECT {_FRAME_COLUMNS} FROM frames WHERE device_id = ? ORDER BY received_at, id LIMIT ?",
            (device_id, limit),
        )
        return [FrameRow(*row) for row in rows]

    def delete_frames(self, frame_ids: Iterable[int]) -> None:
        self.db.executemany("DELETE FROM frames WHERE id = ?", [(frame_id,) for frame_id in frame_ids])

    def unlabelled_crops_older_than(self, before: float, limit: int = 1000) -> list[int]:
        """Face ids whose crop nobody labelled, captured before ``before``; labelled crops are kept forever."""
        rows = self.db.query(
            "SELECT f.id FROM faces f WHERE f.crop_png IS NOT NULL AND f.captured_at < ?"
            " AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.face_id = f.id) ORDER BY f.id LIMIT ?",
            (before, limit),
        )
        return [row[0] for row in rows]

    def forget_crops(self, face_ids: Iterable[int]) -> None:
        self.db.executemany("UPDATE faces SET crop_png = NULL WHERE id = ?", [(face_id,) for face_id in face_ids])

    def delete_quarantine_older_than(self, before: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` quarantine records received before ``before``; returns how many went."""
        return self.db.execute(
            "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine WHERE received_at < ? ORDER BY id LIMIT ?)",
            (before, limit),
        ).rowcount

    def cap_quarantine(self, max_rows: int) -> int:
        """Keep only the newest ``max_rows`` quarantine records; returns how many went."""
        return self.db.execute(
            "DELETE FROM quarantine WHERE id <= (SELECT id FROM quarantine ORDER BY id DESC LIMIT 1 OFFSET ?)", (max_rows,)
        ).rowcount

    def crop_png(self, face_id: int) -> bytes | None:
        """The 64x64 greyscale PNG the model saw for this face, if still kept."""
        value = self.db.scalar("SELECT crop_png FROM faces WHERE id = ?", (face_id,))
        return bytes(value) if value is not None else None
