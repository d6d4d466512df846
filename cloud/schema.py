"""The cloud database schema: one owner for every table, its version and its upgrades.

Only the ingest (``emq-ingest``) and ``emq-db migrate`` change the schema
(:func:`migrate`); the dashboard, the retraining job and other readers call
:func:`check` and refuse, with a clear message, a database that is missing,
older or newer than this code.
"""

from __future__ import annotations

import hashlib

from cloud.db import Database, DatabaseError

SCHEMA_VERSION = 4

_DDL = """
CREATE TABLE IF NOT EXISTS schema_info (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    first_seen {real} NOT NULL,
    last_seen {real} NOT NULL,
    status TEXT,
    status_at {real},
    last_seq BIGINT,
    model_version TEXT,
    last_stats TEXT,
    stats_at {real}
);
CREATE TABLE IF NOT EXISTS results (
    id {id},
    msg_id TEXT NOT NULL UNIQUE,
    device_id TEXT NOT NULL,
    epoch TEXT,
    seq BIGINT NOT NULL,
    captured_at {real} NOT NULL,
    received_at {real} NOT NULL,
    frame_number BIGINT NOT NULL,
    source TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    face_count INTEGER NOT NULL,
    top_label TEXT,
    top_confidence {real},
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_device_time ON results (device_id, captured_at);
CREATE INDEX IF NOT EXISTS results_time ON results (captured_at);
CREATE INDEX IF NOT EXISTS results_label_time ON results (top_label, captured_at);
-- A result's identity: a device's agent numbers results 0, 1, 2... per epoch (one per start),
-- so a rolled-back outbox can never make two results share one. (NULL epoch: rows from schema 1.)
CREATE UNIQUE INDEX IF NOT EXISTS results_identity ON results (device_id, epoch, seq);
-- Per device and epoch, the highest seq such that 0..seq are all stored: the edge's stored mark.
CREATE TABLE IF NOT EXISTS delivery_marks (
    device_id TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq BIGINT NOT NULL,
    updated_at {real} NOT NULL,
    PRIMARY KEY (device_id, epoch)
);
CREATE TABLE IF NOT EXISTS faces (
    id {id},
    result_id BIGINT NOT NULL REFERENCES results (id) ON DELETE CASCADE,
    face_index INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    captured_at {real} NOT NULL,
    track_id BIGINT NOT NULL,
    label TEXT NOT NULL,
    confidence {real} NOT NULL,
    p_angry {real} NOT NULL, p_disgust {real} NOT NULL, p_fear {real} NOT NULL, p_happy {real} NOT NULL,
    p_sad {real} NOT NULL, p_surprise {real} NOT NULL, p_neutral {real} NOT NULL,
    box_x INTEGER NOT NULL, box_y INTEGER NOT NULL, box_w INTEGER NOT NULL, box_h INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    crop_png {blob},
    source TEXT,
    content_sha256 TEXT
);
-- faces.source: NULL for a face an edge device saw, else the tag of the `emq-retrain import` it came from;
-- faces.content_sha256: of an imported crop's pixels, unique, so the same face is imported once.
CREATE INDEX IF NOT EXISTS faces_device_time ON faces (device_id, captured_at);
CREATE INDEX IF NOT EXISTS faces_label_time ON faces (label, captured_at);
CREATE INDEX IF NOT EXISTS faces_confidence ON faces (confidence);
CREATE INDEX IF NOT EXISTS faces_result ON faces (result_id);
CREATE UNIQUE INDEX IF NOT EXISTS faces_content ON faces (content_sha256);
CREATE TABLE IF NOT EXISTS labels (
    id {id},
    face_id BIGINT NOT NULL REFERENCES faces (id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    labelled_by TEXT NOT NULL,
    labelled_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_face ON labels (face_id);
CREATE TABLE IF NOT EXISTS frames (
    id {id},
    device_id TEXT NOT NULL,
    frame_number BIGINT NOT NULL,
    captured_at {real} NOT NULL,
    received_at {real} NOT NULL,
    result_msg_id TEXT,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    size_bytes BIGINT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    stored_in TEXT NOT NULL DEFAULT 'files'
);
CREATE INDEX IF NOT EXISTS frames_device_time ON frames (device_id, captured_at);
CREATE INDEX IF NOT EXISTS frames_result ON frames (result_msg_id);
CREATE INDEX IF NOT EXISTS frames_received ON frames (received_at);
-- The JPEG bytes of frames kept in the database (frames.backend = "database"): ingest workers
-- on several machines and a dashboard elsewhere then share frames without a shared disk.
-- A table of its own, so listing frames never reads the bytes, and deleting a frame deletes them.
CREATE TABLE IF NOT EXISTS frame_data (
    frame_id BIGINT PRIMARY KEY REFERENCES frames (id) ON DELETE CASCADE,
    jpeg {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id {id},
    received_at {real} NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload_size BIGINT NOT NULL,
    payload_sha256 TEXT,
    payload_head {blob} NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_time ON quarantine (received_at);
"""

# Steps that bring a database of schema version N (the key) to N + 1, run before _DDL.
_UPGRADES = {
    1: ["ALTER TABLE results ADD COLUMN epoch TEXT", "DROP INDEX IF EXISTS results_device_seq"],
    2: ["ALTER TABLE frames ADD COLUMN stored_in TEXT NOT NULL DEFAULT 'files'"],
    3: ["ALTER TABLE faces ADD COLUMN source TEXT", "ALTER TABLE faces ADD COLUMN content_sha256 TEXT"],
}


class SchemaError(DatabaseError):
    """A database this code cannot use as it is: missing, older or newer; the message says what to run."""


class SchemaMissing(SchemaError):
    """No schema yet: nothing has migrated this database (the ingest does on its first start)."""


def migrate(db: Database) -> int:
    """Create or upgrade the schema to this code's version; returns the version. Idempotent."""
    ddl = _DDL.format(**db.types)
    with db.transaction():
        if db.dialect == "postgresql":
            # Two workers starting together must not race on CREATE TABLE.
            db.execute("SELECT pg_advisory_xact_lock(7203001)")
        stored = stored_version(db)
        if stored is not None and stored > SCHEMA_VERSION:
            raise SchemaError(f"database schema version {stored} is newer than this code's {SCHEMA_VERSION}: upgrade emotion-mqtt")
        _upgrade(db, stored)
        for statement in filter(None, (part.strip() for part in ddl.split(";"))):
            db.execute(statement)
        if stored is None or db.scalar("SELECT COUNT(*) FROM schema_info") == 0:
            db.execute("INSERT INTO schema_info (version) VALUES (?)", (SCHEMA_VERSION,))
        elif stored < SCHEMA_VERSION:
            db.execute("UPDATE schema_info SET version = ?", (SCHEMA_VERSION,))
        _bound_quarantine_payloads(db)
        _store_images_uncompressed(db)
    return check(db)


def check(db: Database) -> int:
    """The schema version if it is this code's; else SchemaError saying what to do."""
    version = stored_version(db)
    where = db.url.redacted()
    if version is None:
        raise SchemaMissing(f"no emotion-mqtt schema in {where}: start emq-ingest (it creates it) or run `emq-db migrate`")
    if version < SCHEMA_VERSION:
        raise SchemaError(f"database schema version {version} in {where} is older than this code's {SCHEMA_VERSION}:"
                          " run `emq-db migrate` (or start emq-ingest, which migrates)")
    if version > SCHEMA_VERSION:
        raise SchemaError(f"database schema version {version} in {where} is newer than this code's {SCHEMA_VERSION}:"
                          " upgrade this component")
    return version


def stored_version(db: Database) -> int | None:
    """The schema version of an existing database; None for a new one."""
    if db.dialect == "sqlite":
        exists = db.scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_info'")
    else:
        exists = db.scalar("SELECT to_regclass('schema_info') IS NOT NULL")
    return db.scalar("SELECT MAX(version) FROM schema_info") if exists else None


# PostgreSQL tries to compress every value over ~2 KB before moving it out of the row (TOAST). Face
# crops (PNG, ~4.5 KB) and frames (JPEG) never compress, and the attempt was a quarter of the
# server's CPU per stored result (68 -> 52 us, measured on this repo's ingest batches of 200).
# Physical storage only: no schema version, and older code reads the same columns.
_UNCOMPRESSED_COLUMNS = (("faces", "crop_png"), ("frame_data", "jpeg"))


def _store_images_uncompressed(db: Database) -> None:
    if db.dialect != "postgresql":
        return
    for table, column in _UNCOMPRESSED_COLUMNS:
        storage = db.scalar(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = to_regclass(?) AND attname = ?", (table, column))
        if storage not in (None, "e"):
            db.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTERNAL")


def _upgrade(db: Database, stored: int | None) -> None:
    """Run the upgrade steps from ``stored`` up to this code's version."""
    version = stored
    while version is not None and version < SCHEMA_VERSION:
        for statement in _UPGRADES[version]:
            db.execute(statement)
        version += 1

# -- migration: quarantine keeps a digest, never whole payloads --------------------------------
# Databases created before quarantine rows got ``payload_sha256`` may hold whole
# payloads (up to 4 MB each, from the old internal-error path). This step, run
# on every start and a no-op once done, adds the column and cuts every kept
# payload to its head, recording the digest where the whole payload was there
# to hash. It checks the column itself instead of the schema version.
QUARANTINE_HEAD_BYTES = 256
_MIGRATION_BATCH = 500


def _has_column(db: Database, table: str, column: str) -> bool:
    if db.dialect == "sqlite":
        return any(row[1] == column for row in db.query(f"PRAGMA table_info({table})"))
    return bool(db.scalar("SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = current_schema()"
                          " AND table_name = ? AND column_name = ?", (table, column)))


def _bound_quarantine_payloads(db: Database) -> None:
    if _has_column(db, "quarantine", "payload_sha256"):
        return
    db.execute("ALTER TABLE quarantine ADD COLUMN payload_sha256 TEXT")
    # Where the whole payload was kept, its digest can still be taken.
    while rows := db.query(
        "SELECT id, payload_head FROM quarantine WHERE payload_sha256 IS NULL AND LENGTH(payload_head) = payload_size"
        " ORDER BY id LIMIT ?", (_MIGRATION_BATCH,),
    ):
        db.executemany("UPDATE quarantine SET payload_sha256 = ?, payload_head = ? WHERE id = ?",
                       [(hashlib.sha256(bytes(payload)).hexdigest(), bytes(payload[:QUARANTINE_HEAD_BYTES]), row_id)
                        for row_id, payload in rows])
    db.execute(f"UPDATE quarantine SET payload_head = SUBSTR(payload_head, 1, {QUARANTINE_HEAD_BYTES})"
               f" WHERE LENGTH(payload_head) > {QUARANTINE_HEAD_BYTES}")
