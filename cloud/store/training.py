"""What the retraining job reads: the faces with crops and their labels."""

from __future__ import annotations

from cloud.store.dashboard import CropReader
from cloud.store.rows import FACE_COLUMNS, LATEST_LABEL, FaceRow


class TrainingStore(CropReader):
    def training_faces(self, min_confidence: float | None = None) -> list[FaceRow]:
        """Faces with crops for retraining: the human label where there is one, else (optionally) confident model labels."""
        faces = self._records(
            FaceRow.from_columns,
            f"SELECT {FACE_COLUMNS}, {LATEST_LABEL} FROM faces f WHERE f.crop_png IS NOT NULL ORDER BY f.captured_at, f.id",
        )
        if min_confidence is None:
            return [face for face in faces if face.human_label]
        return [face for face in faces if face.human_label or face.confidence >= min_confidence]
