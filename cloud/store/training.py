"""What the retraining job reads (the faces with crops and their labels) and writes (imported labelled faces)."""

from __future__ import annotations

import json

from cloud.store.dashboard import CropReader
from cloud.store.rows import FACE_COLUMNS, LATEST_LABEL, FaceRow, ImportedFace
from contract.emotions import EMOTIONS

# Imported faces belong to this pseudo-device (a valid device id no certificate is issued for).
IMPORT_DEVICE_ID = "import"
_PROBABILITY_COLUMNS = ", ".join(f"p_{name}" for name in EMOTIONS)


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

    def face_with_content(self, content_sha256: str) -> int | None:
        """The id of the face whose crop has this digest, if one is stored."""
        return self.db.scalar("SELECT id FROM faces WHERE content_sha256 = ?", (content_sha256,))

    def add_imported_face(self, face: ImportedFace) -> tuple[int, bool]:
        """Store an imported face as a human-labelled crop: (face id, True), or (the stored one's id, False)
        when a face with the same content is already there."""
        return self.add_imported_faces([face])[0]

    def add_imported_faces(self, faces: list[ImportedFace]) -> list[tuple[int, bool]]:
        """Store imported faces in one transaction; per face (id, newly stored) as ``add_imported_face``.

        Every face needs a result, so each imported picture is a result of its own, from the
        ``import`` pseudo-device: its msg_id and epoch carry the content digest, so the result
        identity refuses a duplicate as well as the faces' digest index does.
        """
        for face in faces:
            if face.label not in EMOTIONS:
                raise ValueError(f"unknown emotion {face.label!r}")
            if len(face.probabilities) != len(EMOTIONS):
                raise ValueError(f"{len(face.probabilities)} probabilities, expected {len(EMOTIONS)}")
        outcomes = []
        with self.transaction():
            for face in faces:
                existing = self.face_with_content(face.content_sha256)
                if existing is not None:
                    outcomes.append((existing, False))
                    continue
                face_id = self._imported_face_row(face, self._imported_result(face))
                self.db.execute(
                    "INSERT INTO labels (face_id, label, labelled_by, labelled_at) VALUES (?, ?, ?, ?)",
                    (face_id, face.label, face.labelled_by[:64], face.imported_at),
                )
                outcomes.append((face_id, True))
        return outcomes

    def _imported_result(self, face: ImportedFace) -> int:
        top = max(range(len(EMOTIONS)), key=lambda index: face.probabilities[index])
        document = json.dumps({"imported": {"source": face.source, "file": face.file_name, "label": face.label},
                               "frame": {"width": face.width, "height": face.height}})
        rows = self.db.query(
            "INSERT INTO results (msg_id, device_id, epoch, seq, captured_at, received_at, frame_number, source, model_name,"
            " model_version, face_count, top_label, top_confidence, document) VALUES (?, ?, ?, 0, ?, ?, 0, ?, ?, ?, 1, ?, ?, ?)"
            " RETURNING id",
            (f"import-{face.content_sha256}", IMPORT_DEVICE_ID, face.content_sha256, face.imported_at, face.imported_at,
             f"import:{face.source}:{face.file_name}"[:512], face.model_name, face.model_version, EMOTIONS[top],
             float(face.probabilities[top]), document),
        )
        return rows[0][0]

    def _imported_face_row(self, face: ImportedFace, result_id: int) -> int:
        top = max(range(len(EMOTIONS)), key=lambda index: face.probabilities[index])
        rows = self.db.query(
            "INSERT INTO faces (result_id, face_index, device_id, captured_at, track_id, label, confidence,"
            f" {_PROBABILITY_COLUMNS}, box_x, box_y, box_w, box_h, model_version, crop_png, source, content_sha256)"
            " VALUES (?, 0, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (result_id, IMPORT_DEVICE_ID, face.imported_at, EMOTIONS[top], float(face.probabilities[top]),
             *(float(value) for value in face.probabilities), *face.box, face.model_version, face.crop_png,
             face.source, face.content_sha256),
        )
        return rows[0][0]
