"""The retention sweep's queries and deletes (the policy itself is :mod:`cloud.retention`)."""

from __future__ import annotations

from typing import Iterable

from cloud.store.base import StorePart
from cloud.store.rows import FRAME_COLUMNS, FrameRow


class RetentionStore(StorePart):
    def frames_older_than(self, before: float, limit: int = 1000) -> list[FrameRow]:
        return self._records(FrameRow.from_columns, f"SELECT {FRAME_COLUMNS} FROM frames WHERE received_at < ? ORDER BY id LIMIT ?", (before, limit))

    def frame_bytes_by_device(self) -> dict[str, int]:
        return dict(self.db.query("SELECT device_id, COALESCE(SUM(size_bytes), 0) FROM frames GROUP BY device_id"))

    def oldest_frames(self, device_id: str, limit: int) -> list[FrameRow]:
        return self._records(
            FrameRow.from_columns, f"SELECT {FRAME_COLUMNS} FROM frames WHERE device_id = ? ORDER BY received_at, id LIMIT ?", (device_id, limit)
        )

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
