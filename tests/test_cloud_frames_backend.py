"""Frames without a shared disk: ``frames.backend = "database"`` next to the default files, on SQLite and PostgreSQL.

The store tests run on both engines (PostgreSQL at 127.0.0.1:5432, skipped with the
reason when it is not reachable); the ingest tests run a real ingest against a real
broker and then serve the frame through the dashboard's own route.
"""

from __future__ import annotations

import base64

import pytest

from cloud.config import RetentionSettings
from cloud.files import DataFolder
from cloud.retention import sweep
from cloud.store import DashboardStore, NewFrame, Store
from contract.messages import FRAME_CONTENT_TYPE
from tests import factories
from tests.cloud_helpers import database_url, frame_properties, ingest_env, jpeg_b64, start_ingest  # noqa: F401 (fixture)
from tests.conftest import WAIT_S, wait_until

DAY_S = 24 * 3600.0


def a_frame(index: int, captured_at: float, *, in_database: bool, result_msg_id: str | None = None) -> NewFrame:
    jpeg = base64.b64decode(jpeg_b64(seed=index))
    path = f"frames/cam-a/1970-01-01/{index:09d}-f{index}.jpg"
    return NewFrame("cam-a", index, captured_at, result_msg_id, 96, 64, len(jpeg), path, jpeg if in_database else None)


def test_a_frame_kept_in_the_database_is_read_back_by_a_reader(database_url):
    store = Store(database_url)
    result = factories.result()
    assert store.add_result(result, 1.0, [None], result.to_json())
    frame = a_frame(1, 1.0, in_database=True, result_msg_id=result.msg_id)
    with store.transaction():
        assert store.add_frames([frame], 2.0) == 1
    reader = DashboardStore(database_url)  # another client, as the dashboard on another host would be
    stored = reader.frame_for_result(result.msg_id)
    assert stored is not None and stored.in_database and stored.stored_in == "database"
    assert reader.frame_jpeg(stored.id) == frame.jpeg
    reader.close()
    store.close()


def test_a_redelivered_frame_keeps_one_row_and_one_copy_of_its_bytes(database_url):
    store = Store(database_url)
    frame = a_frame(1, 1.0, in_database=True)
    with store.transaction():
        assert store.add_frames([frame, frame], 2.0) == 1
    with store.transaction():
        assert store.add_frames([frame], 3.0) == 0
    assert store.counts()["frames"] == 1
    assert store.db.scalar("SELECT COUNT(*) FROM frame_data") == 1
    store.close()


def test_both_backends_can_live_in_one_store(database_url, tmp_path):
    """A deployment that switches backend keeps serving its older frames from where they are."""
    store = Store(database_url)
    files = DataFolder(tmp_path / "data")
    on_disk, in_db = a_frame(1, 1.0, in_database=False), a_frame(2, 1.0, in_database=True)
    files.write(files.relative_path("frames", "cam-a", 1.0, on_disk.path.rsplit("/", 1)[1]), base64.b64decode(jpeg_b64(seed=1)))
    with store.transaction():
        store.add_frames([on_disk, in_db], 2.0)
    kinds = {row[0]: row[1] for row in store.db.query("SELECT frame_number, stored_in FROM frames")}
    assert kinds == {1: "files", 2: "database"}
    store.close()


def test_retention_drops_old_database_frames_with_their_bytes(database_url, tmp_path):
    store = Store(database_url)
    now = 100 * DAY_S
    old = [a_frame(index, now - 40 * DAY_S, in_database=True) for index in range(3)]
    new = [a_frame(index + 10, now - DAY_S, in_database=True) for index in range(2)]
    with store.transaction():
        store.add_frames(old, now - 40 * DAY_S)
        store.add_frames(new, now - DAY_S)
    report = sweep(store, DataFolder(tmp_path / "data"), RetentionSettings(frame_max_age_days=30), now)
    assert report.frames_deleted == 3
    assert report.bytes_freed == sum(frame.size_bytes for frame in old)
    assert store.counts()["frames"] == 2
    assert store.db.scalar("SELECT COUNT(*) FROM frame_data") == 2  # the bytes went with their rows
    store.close()


def test_the_per_device_cap_counts_database_frames(database_url, tmp_path):
    store = Store(database_url)
    frames = [a_frame(index, float(index), in_database=True) for index in range(6)]
    with store.transaction():
        for frame in frames:
            store.add_frames([frame], frame.captured_at)
    cap = 1024 * 1024
    big = [NewFrame("cam-b", index, float(index), None, 96, 64, cap // 2, f"frames/cam-b/x/{index}.jpg", b"\xff\xd8\xff" + bytes(10))
           for index in range(4)]
    with store.transaction():
        for frame in big:
            store.add_frames([frame], frame.captured_at)
    report = sweep(store, DataFolder(tmp_path / "data"), RetentionSettings(frame_max_bytes_per_device=cap), 10.0)
    remaining = [row[0] for row in store.db.query("SELECT frame_number FROM frames WHERE device_id = 'cam-b' ORDER BY frame_number")]
    assert remaining == [2, 3]  # the oldest went first, down to the cap
    assert report.frames_deleted == 2
    assert store.db.scalar("SELECT COUNT(*) FROM frame_data") == 6 + 2
    store.close()


@pytest.mark.parametrize("backend", ["files", "database"])
def test_the_ingest_stores_frames_with_the_chosen_backend(backend, broker, pki_dir, tmp_path, database_url, mqtt_client, topics, spawned):
    data_dir = tmp_path / "data"
    env = ingest_env(pki_dir, broker.settings.tls_port, data_dir, database_url, FRAMES__BACKEND=backend)
    log_path = tmp_path / "ingest.log"
    spawned.append(start_ingest(env, log_path))
    assert wait_until(lambda: log_path.exists() and "subscriptions active" in log_path.read_text(), WAIT_S), log_path.read_text()
    device = mqtt_client("cam-a")
    result = factories.result()
    jpeg = jpeg_b64(seed=3)
    assert device.publish(topics.result("cam-a"), result.to_json(), qos=1).wait(WAIT_S)
    assert device.publish(topics.frame("cam-a"), jpeg, qos=1, user_properties=frame_properties(5, result),
                          content_type=FRAME_CONTENT_TYPE).wait(WAIT_S)
    reader = DashboardStore(database_url)
    assert wait_until(lambda: reader.frame_for_result(result.msg_id) is not None), log_path.read_text()
    frame = reader.frame_for_result(result.msg_id)
    files_written = [path for path in data_dir.rglob("*.jpg")] if data_dir.exists() else []
    if backend == "database":
        assert frame.in_database and reader.frame_jpeg(frame.id) == base64.b64decode(jpeg)
        assert files_written == []  # nothing on the ingest's disk
    else:
        assert not frame.in_database and (data_dir / frame.path).read_bytes() == base64.b64decode(jpeg)
        assert reader.frame_jpeg(frame.id) is None
    reader.close()
