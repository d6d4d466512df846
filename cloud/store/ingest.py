"""The ingest's writes: results and faces, devices, frames, quarantine, and the stored marks."""

from __future__ import annotations

import hashlib
import time
from typing import Iterable

from cloud.schema import QUARANTINE_HEAD_BYTES
from cloud.store.base import StorePart
from cloud.store.rows import NewFrame, NewResult
from contract.emotions import EMOTIONS
from contract.messages import Result


# Columns written in bulk, with the schema's types (PostgreSQL sends one typed array per column).
RESULT_COLUMNS = (
    ("msg_id", "text"), ("device_id", "text"), ("epoch", "text"), ("seq", "bigint"), ("captured_at", "real"),
    ("received_at", "real"), ("frame_number", "bigint"), ("source", "text"), ("model_name", "text"),
    ("model_version", "text"), ("face_count", "integer"), ("top_label", "text"), ("top_confidence", "real"),
    ("document", "text"),
)
FACE_COLUMNS = (
    ("result_id", "bigint"), ("face_index", "integer"), ("device_id", "text"), ("captured_at", "real"),
    ("track_id", "bigint"), ("label", "text"), ("confidence", "real"), *((f"p_{name}", "real") for name in EMOTIONS),
    ("box_x", "integer"), ("box_y", "integer"), ("box_w", "integer"), ("box_h", "integer"), ("model_version", "text"),
    ("crop_png", "blob"),
)
FRAME_COLUMNS = (
    ("device_id", "text"), ("frame_number", "bigint"), ("captured_at", "real"), ("received_at", "real"),
    ("result_msg_id", "text"), ("width", "integer"), ("height", "integer"), ("size_bytes", "bigint"), ("path", "text"),
    ("stored_in", "text"),
)


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


# The walk from the saved mark (or -1) through the stored seqs, and the upsert of where it ends,
# in one statement (one round trip); nothing is written while seq 0 is missing (the walk ends at -1).
_ADVANCE_MARK = (
    "INSERT INTO delivery_marks (device_id, epoch, seq, updated_at)"
    " SELECT ?, ?, walked.seq, ? FROM ("
    "  WITH RECURSIVE run(seq) AS ("
    "   SELECT COALESCE((SELECT m.seq FROM delivery_marks m WHERE m.device_id = ? AND m.epoch = ?), -1)"
    "   UNION ALL"
    "   SELECT (SELECT r.seq FROM results r WHERE r.device_id = ? AND r.epoch = ? AND r.seq = run.seq + 1)"
    "   FROM run WHERE run.seq IS NOT NULL"
    "  ) SELECT MAX(seq) AS seq FROM run"
    " ) AS walked WHERE walked.seq >= 0"
    " ON CONFLICT (device_id, epoch) DO UPDATE SET updated_at = excluded.updated_at,"
    " seq = CASE WHEN excluded.seq > delivery_marks.seq THEN excluded.seq ELSE delivery_marks.seq END"
    " RETURNING seq"
)


class IngestStore(StorePart):
    """Everything the ingest writes. Opened with ``migrate=True`` by the ingest, which owns the schema."""

    def add_result(self, result: Result, received_at: float, crops: list[bytes | None], document: str) -> bool:
        """Store one result and its faces; False if it was stored before (a redelivery or a resend)."""
        return self.add_results([NewResult(result, crops, document)], received_at) == 1

    def add_results(self, items: list[NewResult], received_at: float) -> int:
        """Store results and their faces in a few statements; returns how many were new.

        One multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING`` tells exactly
        which rows this transaction created, even with concurrent workers, so
        faces are never stored twice for a redelivered result.
        """
        unique = _distinct_results(items)
        if not unique:
            return 0
        # No conflict target: a known msg_id (a redelivery) and a known (device, epoch, seq) are both skipped.
        created = dict(self.db.insert_rows(
            "results", RESULT_COLUMNS, [_result_values(item, received_at) for item in unique],
            "ON CONFLICT DO NOTHING RETURNING msg_id, id",
        ))
        face_rows = [row for item in unique if item.result.msg_id in created for row in _face_values(created[item.result.msg_id], item)]
        self.db.insert_rows("faces", FACE_COLUMNS, face_rows)
        return len(created)

    # == devices ==========================================================================
    def touch_device(self, device_id: str, seen_at: float, seq: int | None = None, model_version: str | None = None) -> None:
        """Record that a device was heard from (once per batch, not per message)."""
        self.db.execute(
            "INSERT INTO devices (device_id, first_seen, last_seen, last_seq, model_version) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (device_id) DO UPDATE SET last_seen = excluded.last_seen,"
            " last_seq = COALESCE(excluded.last_seq, devices.last_seq),"
            " model_version = COALESCE(excluded.model_version, devices.model_version)",
            (device_id, seen_at, seen_at, seq, model_version),
        )

    def set_device_status(self, device_id: str, status: str, at: float) -> None:
        self.touch_device(device_id, at)
        self.db.execute("UPDATE devices SET status = ?, status_at = ? WHERE device_id = ?", (status, at, device_id))

    def set_device_stats(self, device_id: str, stats_json: str, at: float) -> None:
        self.touch_device(device_id, at)
        self.db.execute("UPDATE devices SET last_stats = ?, stats_at = ? WHERE device_id = ?", (stats_json, at, device_id))

    # == delivery marks (what the edge may forget) =====================================
    def advance_marks(self, epochs: Iterable[tuple[str, str]], at: float | None = None) -> dict[tuple[str, str], int]:
        """For each (device, epoch): the highest seq with 0..seq all stored, saved and returned.

        Computed from the committed results, so every worker's commits count
        (each worker calls this after its own commit; the saved mark only grows).
        A pair whose seq 0 is not stored yet is left out. One statement per
        pair: a walk from the saved mark, one unique-index probe per seq stored
        since (``seq = previous + 1`` as a correlated scalar subquery, which
        neither engine turns into a join), so the cost is what was stored since
        the last mark, whatever the table's size, its statistics, or a long
        backlog behind a gap. (A set-based NOT EXISTS gap search was planned by
        PostgreSQL, on a table its statistics called small, as a scan of the
        device's whole epoch per stored row: 120 ms a batch at 4,000 rows.)

        The marks commit without waiting for the disk (``db.derived_writes``):
        a mark is derived from results that are durable already, and one lost
        in a server crash is walked again, from the older mark, to the same place.
        """
        marks = {}
        now = at or time.time()
        with self.db.derived_writes():
            for device_id, epoch in epochs:
                saved = self.db.scalar(_ADVANCE_MARK, (device_id, epoch, now) + (device_id, epoch) * 2)
                if saved is not None:
                    marks[(device_id, epoch)] = int(saved)
        return marks

    def delivery_mark(self, device_id: str, epoch: str) -> int | None:
        return self.db.scalar("SELECT seq FROM delivery_marks WHERE device_id = ? AND epoch = ?", (device_id, epoch))

    # == frames ===========================================================================
    def add_frame(self, frame: NewFrame, received_at: float) -> int:
        return self.add_frames([frame], received_at)

    def add_frames(self, frames: list[NewFrame], received_at: float) -> int:
        """Record frames; returns how many are new (a redelivered frame has the same name and is skipped).

        A frame with ``jpeg`` set keeps its bytes in ``frame_data``, written in
        the same transaction as its row, so the two never part.
        """
        rows = [(frame.device_id, frame.frame_number, frame.captured_at, received_at, frame.result_msg_id,
                 frame.width, frame.height, frame.size_bytes, frame.path, frame.stored_in) for frame in frames]
        new_ids = dict(self.db.insert_rows("frames", FRAME_COLUMNS, rows, "ON CONFLICT (path) DO NOTHING RETURNING path, id"))
        kept_bytes = {frame.path: frame.jpeg for frame in frames if frame.jpeg is not None}  # one per name
        self._add_frame_bytes([(new_ids[path], jpeg) for path, jpeg in kept_bytes.items() if path in new_ids])
        return len(new_ids)

    def _add_frame_bytes(self, rows: list[tuple[int, bytes]]) -> None:
        self.db.insert_rows("frame_data", (("frame_id", "bigint"), ("jpeg", "blob")), rows)

    def result_devices(self, msg_ids: Iterable[str]) -> dict[str, str]:
        """msg_id -> device_id of the stored results among ``msg_ids`` (to check a frame's claimed link)."""
        wanted = list(set(msg_ids))
        if not wanted:
            return {}
        placeholders = ", ".join(["?"] * len(wanted))
        return dict(self.db.query(f"SELECT msg_id, device_id FROM results WHERE msg_id IN ({placeholders})", wanted))

    # == quarantine =======================================================================
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
