"""The cloud store: every result, face, frame, label and quarantined message. The only owner of the SQL.

Split by client, each part opening the same database (SQLite or PostgreSQL,
:mod:`cloud.db`) for what that client does:

* :class:`IngestStore` — the ingest's writes (it also migrates the schema, :mod:`cloud.schema`);
* :class:`DashboardStore` — the web UI's reads and its labels;
* :class:`TrainingStore` — the retraining job's faces and crops, and the labelled faces it imports;
* :class:`RetentionStore` — the retention sweep's queries and deletes.

Readers check the schema version on opening and refuse a database that is
missing, older or newer. :class:`Store` is all of them at once, for tools and
tests. Frames are JPEG files under the data folder (rows hold paths relative
to it); the 64x64 face crops (~4 KB PNG) live in the database itself, which is
several times faster than one file each and keeps a crop and its labels in one
transaction.
"""

from cloud.store.dashboard import DashboardStore
from cloud.store.ingest import IngestStore
from cloud.store.retention import RetentionStore
from cloud.store.rows import DeviceRow, FaceRow, FrameRow, ImportedFace, NewFrame, NewResult, QuarantineRow, ResultRow
from cloud.store.training import IMPORT_DEVICE_ID, TrainingStore


class Store(IngestStore, DashboardStore, TrainingStore, RetentionStore):
    """Every part at once, migrating by default: for tools, benchmarks and tests, not for components."""

    def __init__(self, url, *, migrate: bool = True) -> None:
        super().__init__(url, migrate=migrate)


__all__ = [
    "IMPORT_DEVICE_ID", "DashboardStore", "DeviceRow", "FaceRow", "FrameRow", "ImportedFace", "IngestStore", "NewFrame",
    "NewResult", "QuarantineRow", "ResultRow", "RetentionStore", "Store", "TrainingStore",
]
