"""Reads the dashboard needs beyond :class:`cloud.store.Store`'s API, through ``store.db.query``.

Kept here (not in ``cloud/``) so the store's owner can adopt them later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cloud.store import Store

# "Nice" chart bucket sizes, in seconds: 1 s … 1 day.
BUCKET_SIZES_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)
TARGET_BUCKETS = 60


@dataclass(frozen=True)
class ResultFilter:
    """The history filters; None means "any"."""

    device_id: str | None = None
    label: str | None = None
    since: float | None = None
    until: float | None = None

    def as_store_arguments(self) -> dict:
        return {"device_id": self.device_id, "label": self.label, "since": self.since, "until": self.until}


def _where(conditions: list[tuple[str, object]]) -> tuple[str, list]:
    chosen = [(clause, value) for clause, value in conditions if value is not None]
    where = (" WHERE " + " AND ".join(clause for clause, _ in chosen)) if chosen else ""
    return where, [value for _, value in chosen]


def face_time_range(store: Store, device_id: str | None, since: float | None, until: float | None) -> tuple[float, float] | None:
    """First and last capture time of the faces a chart would cover; None when there are none."""
    where, parameters = _where([("device_id = ?", device_id), ("captured_at >= ?", since), ("captured_at < ?", until)])
    row = store.db.query(f"SELECT MIN(captured_at), MAX(captured_at) FROM faces{where}", parameters)[0]
    return None if row[0] is None else (float(row[0]), float(row[1]))


def devices_with_faces(store: Store, since: float | None, until: float | None) -> list[str]:
    where, parameters = _where([("captured_at >= ?", since), ("captured_at < ?", until)])
    return [row[0] for row in store.db.query(f"SELECT DISTINCT device_id FROM faces{where} ORDER BY device_id", parameters)]


def choose_bucket(span_s: float) -> int:
    """The smallest nice bucket that keeps a chart at or under ~60 points."""
    for size in BUCKET_SIZES_S:
        if span_s / size <= TARGET_BUCKETS:
            return size
    return BUCKET_SIZES_S[-1]


def result_frame_size(store: Store, result_id: int) -> tuple[int, int] | None:
    """The captured frame's size from the stored result document: face boxes are in these pixels."""
    rows = store.db.query("SELECT document FROM results WHERE id = ?", (result_id,))
    if not rows:
        return None
    try:
        frame = json.loads(rows[0][0])["frame"]
        return int(frame["width"]), int(frame["height"])
    except (ValueError, KeyError, TypeError):
        return None


def result_device_ids(store: Store) -> list[str]:
    """Devices with stored results (the devices table is filled only by the ingest's status/stats)."""
    return [row[0] for row in store.db.query("SELECT DISTINCT device_id FROM results ORDER BY device_id")]
