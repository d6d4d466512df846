"""The schema has one owner: the ingest (or `emq-db migrate`) creates and upgrades it; readers only check it."""

from __future__ import annotations

import subprocess

import pytest

from cloud import schema
from cloud.db import Database
from cloud.store import DashboardStore, IngestStore, Store, TrainingStore
from tests import factories
from tests.cloud_helpers import database_url  # noqa: F401 (fixture)
from tests.conftest import console_script


def tables(url: str) -> set[str]:
    database = Database(url)
    try:
        if database.dialect == "sqlite":
            return {row[0] for row in database.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {row[0] for row in database.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    finally:
        database.close()


def set_version(url: str, version: int) -> None:
    database = Database(url)
    database.execute("UPDATE schema_info SET version = ?", (version,))
    database.close()


@pytest.mark.parametrize("reader", [DashboardStore, TrainingStore])
def test_readers_never_create_the_schema_and_say_what_to_run(database_url, reader):  # noqa: F811
    with pytest.raises(schema.SchemaMissing, match="emq-db migrate"):
        reader(database_url)
    assert "results" not in tables(database_url)


def test_the_ingest_creates_it_and_readers_then_open(database_url):  # noqa: F811
    IngestStore(database_url, migrate=True).close()
    assert {"results", "faces", "frames", "labels", "quarantine", "devices", "delivery_marks"} <= tables(database_url)
    DashboardStore(database_url).close()
    TrainingStore(database_url).close()


def test_an_older_or_newer_schema_is_refused_by_readers(database_url):  # noqa: F811
    Store(database_url).close()
    set_version(database_url, 1)
    with pytest.raises(schema.SchemaError, match=f"older than this code.s {schema.SCHEMA_VERSION}: run .emq-db migrate"):
        DashboardStore(database_url)
    set_version(database_url, schema.SCHEMA_VERSION + 1)
    with pytest.raises(schema.SchemaError, match="newer than this code's"):
        DashboardStore(database_url)
    with pytest.raises(schema.SchemaError, match="newer"):
        IngestStore(database_url, migrate=True)  # the ingest never downgrades either


def test_a_version_1_database_is_upgraded_in_place(tmp_path):
    """Schema 1 had no epochs; its results keep their rows (epoch NULL) and the new identity index applies."""
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    store = Store(url)
    with store.transaction():
        store.add_results([factories_new_result()], 0.0)
    store.db.execute("DROP INDEX results_identity")
    store.db.execute("ALTER TABLE results DROP COLUMN epoch")
    store.db.execute("DROP TABLE delivery_marks")
    downgrade_faces_to_version_3(store)
    make_version_2_frames(store)
    store.db.execute("UPDATE schema_info SET version = 1")
    store.close()
    upgraded = Store(url)
    assert schema.check(upgraded.db) == schema.SCHEMA_VERSION
    assert upgraded.db.query("SELECT epoch, seq FROM results") == [(None, 0)]
    assert upgraded.advance_marks([("cam-a", "e1")]) == {}
    assert upgraded.db.query("SELECT path, stored_in FROM frames") == [("frames/old.jpg", "files")]
    upgraded.close()


def make_version_2_frames(store):
    """Schema 2 kept every frame as a file: no stored_in column, no frame_data table."""
    from cloud.store import NewFrame

    with store.transaction():
        store.add_frames([NewFrame("cam-a", 0, 0.0, None, 1, 1, 10, "frames/old.jpg")], 0.0)
    store.db.execute("DROP TABLE frame_data")
    store.db.execute("DROP INDEX frames_received")
    store.db.execute("ALTER TABLE frames DROP COLUMN stored_in")


def test_a_version_2_database_keeps_its_frames_as_files(tmp_path):
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    store = Store(url)
    make_version_2_frames(store)
    downgrade_faces_to_version_3(store)
    store.db.execute("UPDATE schema_info SET version = 2")
    store.close()
    upgraded = Store(url)
    assert schema.check(upgraded.db) == schema.SCHEMA_VERSION
    frame = upgraded.oldest_frames("cam-a", 10)[0]
    assert (frame.path, frame.in_database) == ("frames/old.jpg", False)
    assert upgraded.db.scalar("SELECT COUNT(*) FROM frame_data") == 0
    upgraded.close()


def downgrade_faces_to_version_3(store) -> None:
    """Schemas up to 3 had no import columns on faces."""
    store.db.execute("DROP INDEX faces_content")
    store.db.execute("ALTER TABLE faces DROP COLUMN content_sha256")
    store.db.execute("ALTER TABLE faces DROP COLUMN source")


def test_a_version_3_database_gets_the_import_columns(tmp_path):
    """Schema 4 added faces.source and faces.content_sha256 (unique): edge faces keep NULL in both."""
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    store = Store(url)
    with store.transaction():
        store.add_results([factories_new_result(faces=[factories.face()])], 0.0)
    downgrade_faces_to_version_3(store)
    store.db.execute("UPDATE schema_info SET version = 3")
    store.close()
    with pytest.raises(schema.SchemaError, match="older"):
        TrainingStore(url)
    upgraded = Store(url)
    assert schema.check(upgraded.db) == schema.SCHEMA_VERSION == 4
    assert upgraded.db.query("SELECT source, content_sha256 FROM faces") == [(None, None)]
    upgraded.db.execute("UPDATE faces SET content_sha256 = 'x'")
    with pytest.raises(Exception, match="UNIQUE"):  # the digest index came with the upgrade
        with upgraded.transaction():
            upgraded.add_results([factories_new_result(faces=[factories.face()])], 0.0)
            upgraded.db.execute("UPDATE faces SET content_sha256 = 'x' WHERE content_sha256 IS NULL")
    upgraded.close()


def factories_new_result(faces=None):
    from cloud.store import NewResult

    result = factories.result(seq=0, faces=faces or [])
    crops = [None] * len(result.faces)
    return NewResult(result, crops, result.to_json().decode())


def test_emq_db_migrates_and_reports_the_version(tmp_path):
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    version = subprocess.run([console_script("emq-db"), "version", "--database-url", url], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("stored None")
    migrate = subprocess.run([console_script("emq-db"), "migrate", "--database-url", url], capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 0 and f"schema version {schema.SCHEMA_VERSION}" in migrate.stdout
    set_version(url, 99)
    refused = subprocess.run([console_script("emq-db"), "migrate", "--database-url", url], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 3 and "newer" in refused.stderr


def test_the_dashboard_waits_a_bounded_time_for_the_schema(tmp_path, pki_dir):
    from tests.webui_helpers import webui_config
    from webui.services import StartupError, open_store

    config = webui_config(tmp_path, pki_dir, 1883)
    empty = f"sqlite:///{tmp_path / 'not-yet.db'}"
    config = config.model_copy(update={"store": config.store.model_copy(update={"url": empty, "schema_wait_s": 0.3})})
    with pytest.raises(StartupError, match="emq-db migrate"):
        open_store(config)
    IngestStore(empty, migrate=True).close()  # the ingest's first start
    open_store(config).close()


def test_postgresql_stores_images_uncompressed_and_an_existing_database_is_switched(database_url):  # noqa: F811
    database = Database(database_url)
    if database.dialect != "postgresql":
        database.close()
        pytest.skip("PostgreSQL's TOAST storage setting; SQLite has none")
    storage = ("SELECT attstorage FROM pg_attribute WHERE attrelid = to_regclass(?) AND attname = ?")
    try:
        schema.migrate(database)
        assert [database.scalar(storage, column) for column in schema._UNCOMPRESSED_COLUMNS] == ["e", "e"]
        # A database made before the setting (compressible storage) is switched by the next migration.
        database.execute("ALTER TABLE faces ALTER COLUMN crop_png SET STORAGE EXTENDED")
        schema.migrate(database)
        assert database.scalar(storage, ("faces", "crop_png")) == "e"
    finally:
        database.close()
