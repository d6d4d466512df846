"""The dashboard's reads (devices, history, charts, frames, crops) and its one write: labels."""

from __future__ import annotations

import json
import time

from cloud.store.base import StorePart
from cloud.store.rows import (
    DEVICE_COLUMNS,
    FACE_COLUMNS,
    FRAME_COLUMNS,
    LATEST_LABEL,
    QUARANTINE_COLUMNS,
    RESULT_COLUMNS,
    DeviceRow,
    FaceRow,
    FrameRow,
    QuarantineRow,
    ResultRow,
    filters,
)
from contract.emotions import EMOTIONS


def camera_faces(where: str, parameters: list) -> tuple[str, list]:
    """Restrict a faces WHERE clause to faces a camera saw: imported faces have no place in its charts."""
    return f"{where} AND source IS NULL" if where else " WHERE source IS NULL", parameters


class CropReader(StorePart):
    """The stored 64x64 face crops (the dashboard shows them, training learns from them)."""

    def crop_png(self, face_id: int) -> bytes | None:
        """The 64x64 greyscale PNG the model saw for this face, if still kept."""
        value = self.db.scalar("SELECT crop_png FROM faces WHERE id = ?", (face_id,))
        return bytes(value) if value is not None else None


class DashboardStore(CropReader):
    """Everything the web UI reads, and the labels people give."""

    # == devices and results ===============================================================
    def devices(self) -> list[DeviceRow]:
        return self._records(DeviceRow.from_columns, f"SELECT {DEVICE_COLUMNS} FROM devices ORDER BY device_id")

    def result_device_ids(self) -> list[str]:
        """Devices with stored results (the devices table is filled only by the ingest's status/stats)."""
        return [row[0] for row in self.db.query("SELECT DISTINCT device_id FROM results ORDER BY device_id")]

    def results(self, device_id=None, label=None, since=None, until=None, limit: int = 50, offset: int = 0) -> list[ResultRow]:
        where, parameters = filters(device_id, label, since, until)
        return self._records(
            ResultRow.from_columns,
            f"SELECT {RESULT_COLUMNS} FROM results{where} ORDER BY captured_at DESC, id DESC LIMIT ? OFFSET ?",
            (*parameters, limit, offset),
        )

    def count_results(self, device_id=None, label=None, since=None, until=None) -> int:
        where, parameters = filters(device_id, label, since, until)
        return self.db.scalar(f"SELECT COUNT(*) FROM results{where}", parameters)

    def result(self, result_id: int) -> tuple[ResultRow, list[FaceRow]] | None:
        found = self._record(ResultRow.from_columns, f"SELECT {RESULT_COLUMNS} FROM results WHERE id = ?", (result_id,))
        if found is None:
            return None
        faces = self._records(
            FaceRow.from_columns,
            f"SELECT {FACE_COLUMNS}, {LATEST_LABEL} FROM faces f WHERE f.result_id = ? ORDER BY f.face_index", (result_id,),
        )
        return found, faces

    def result_by_msg_id(self, msg_id: str) -> ResultRow | None:
        return self._record(ResultRow.from_columns, f"SELECT {RESULT_COLUMNS} FROM results WHERE msg_id = ?", (msg_id,))

    def result_frame_size(self, result_id: int) -> tuple[int, int] | None:
        """The captured frame's size from the stored result document: face boxes are in these pixels."""
        document = self.db.scalar("SELECT document FROM results WHERE id = ?", (result_id,))
        if document is None:
            return None
        try:
            frame = json.loads(document)["frame"]
            return int(frame["width"]), int(frame["height"])
        except (ValueError, KeyError, TypeError):
            return None

    def face(self, face_id: int) -> FaceRow | None:
        return self._record(FaceRow.from_columns, f"SELECT {FACE_COLUMNS}, {LATEST_LABEL} FROM faces f WHERE f.id = ?", (face_id,))

    def frame_for_result(self, msg_id: str) -> FrameRow | None:
        """The frame of a result: only one from the result's own device (a frame's link is its device's claim)."""
        return self._record(
            FrameRow.from_columns,
            f"SELECT {FRAME_COLUMNS} FROM frames WHERE result_msg_id = ?"
            " AND device_id = (SELECT r.device_id FROM results r WHERE r.msg_id = ?) ORDER BY id LIMIT 1",
            (msg_id, msg_id),
        )

    def frame_jpeg(self, frame_id: int) -> bytes | None:
        """The bytes of a frame kept in the database (``FrameRow.in_database``); None if gone."""
        data = self.db.scalar("SELECT jpeg FROM frame_data WHERE frame_id = ?", (frame_id,))
        return None if data is None else bytes(data)

    # == charts ============================================================================
    def emotion_share(self, device_id: str | None, since: float, until: float, bucket_s: int) -> list[tuple[float, str, int]]:
        """(bucket start, label, faces) for a stacked chart of emotions over time."""
        where, parameters = camera_faces(*filters(device_id, None, since, until))
        rows = self.db.query(
            f"SELECT CAST(captured_at / ? AS BIGINT) * ? AS bucket, label, COUNT(*) FROM faces{where}"
            " GROUP BY bucket, label ORDER BY bucket, label",
            (bucket_s, bucket_s, *parameters),
        )
        return [(float(bucket), label, count) for bucket, label, count in rows]

    def face_time_range(self, device_id: str | None, since: float | None, until: float | None) -> tuple[float, float] | None:
        """First and last capture time of the faces a chart would cover; None when there are none."""
        where, parameters = camera_faces(*filters(device_id, None, since, until))
        row = self.db.query(f"SELECT MIN(captured_at), MAX(captured_at) FROM faces{where}", parameters)[0]
        return None if row[0] is None else (float(row[0]), float(row[1]))

    def devices_with_faces(self, since: float | None, until: float | None) -> list[str]:
        where, parameters = camera_faces(*filters(None, None, since, until))
        return [row[0] for row in self.db.query(f"SELECT DISTINCT device_id FROM faces{where} ORDER BY device_id", parameters)]

    # == labels ============================================================================
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
        return self._records(
            FaceRow.from_columns,
            f"SELECT {FACE_COLUMNS} FROM faces f WHERE f.crop_png IS NOT NULL"
            f" AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.face_id = f.id) {where}"
            " ORDER BY f.confidence ASC, f.id ASC LIMIT ?",
            (*parameters, limit),
        )

    def label_progress(self) -> tuple[int, int]:
        """(faces labelled by a person, faces with a crop)."""
        labelled = self.db.scalar("SELECT COUNT(DISTINCT face_id) FROM labels")
        with_crop = self.db.scalar("SELECT COUNT(*) FROM faces WHERE crop_png IS NOT NULL")
        return labelled, with_crop

    # == operations ========================================================================
    def quarantined(self, limit: int = 100) -> list[QuarantineRow]:
        return self._records(QuarantineRow.from_columns, f"SELECT {QUARANTINE_COLUMNS} FROM quarantine ORDER BY id DESC LIMIT ?", (limit,))

    def counts(self) -> dict[str, int]:
        tables = ("results", "faces", "frames", "labels", "quarantine", "devices")
        return {table: self.db.scalar(f"SELECT COUNT(*) FROM {table}") for table in tables}
