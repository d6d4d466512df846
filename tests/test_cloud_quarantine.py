"""Bad input cannot fill the disk or the log, and no frame overwrites or borrows another's.

Through the real broker into a running ``emq-ingest`` (SQLite and PostgreSQL),
except where a test drives the ingest's own batch code directly.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import signal
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from cloud.config import IngestConfig, RetentionSettings
from cloud import schema
from cloud.db import Database
from cloud.files import DataFolder
from cloud.ingest import IngestService
from cloud.ratelimit import RateLimitedLog, kind_of
from cloud.retention import sweep
from cloud.store import Store
from comms.mqtt import Message
from contract.topics import Channel
from tests import factories
from tests.cloud_helpers import database_url, frame_properties, ingest_env, jpeg_b64, start_ingest  # noqa: F401 (fixture)
from tests.conftest import WAIT_S, wait_until

FLOOD = 1000
FLOOD_CHUNK = 50  # published, then waited for: the broker never queues much of the flood
FLOOD_WAIT_S = 120.0
# The most one quarantine row can take, whatever the message: its kept head (256 bytes), the
# SHA-256 in hex (64), the topic and reason at their stored maximum (512 and 1,000 characters),
# plus numbers, record header and index entries (a generous 216).
QUARANTINE_ROW_BOUND = 256 + 64 + 512 + 1000 + 216
MALFORMED_CAPTURED_AT = ["2026-13-45T00:00:00.000Z", "yesterday", "", "2026-11-22 03:47:13", "9" * 24, "2026-11-22T03:47:13.123Z" + "x"]


def big_jpeg(seed: int = 0, width: int = 960, height: int = 720) -> bytes:
    """A valid JPEG of about 800 KB (noise does not compress): its base64 is ~1 MB."""
    image = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return jpeg.tobytes()


def declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header (SOF0) claiming another size."""
    start = jpeg.index(b"\xff\xc0")
    header = bytearray(jpeg)
    header[start + 5 : start + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(header)


def bad_time_properties(index: int) -> list[tuple[str, str]]:
    return [("frame_number", str(index)), ("captured_at", MALFORMED_CAPTURED_AT[index % len(MALFORMED_CAPTURED_AT)])]


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def launch(env: dict[str, str], log_path: Path, spawned: list):
    process = start_ingest(env, log_path)
    spawned.append(process)
    assert wait_until(lambda: "subscriptions active" in log_text(log_path), WAIT_S), log_text(log_path)
    return process


def scrape(env: dict[str, str]) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{env['EMQ_INGEST__METRICS_PORT']}/metrics", timeout=5) as response:
        return response.read().decode()


def database_bytes(url: str, tmp_path: Path) -> int:
    """What the database takes on disk: the SQLite files, or the quarantine table with its indexes and TOAST.

    Call with no other connection open: SQLite's last one folds the WAL back into the file."""
    store = Store(url)
    try:
        if store.db.dialect == "postgresql":
            return store.db.scalar("SELECT pg_total_relation_size('quarantine')")
    finally:
        store.close()
    return sum(path.stat().st_size for path in tmp_path.glob("cloud.db*"))


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_a_flood_of_large_bad_frames_cannot_fill_the_disk_or_the_log(broker, pki_dir, tmp_path, database_url, mqtt_client, topics, spawned):
    """1,000 valid ~1 MB JPEG frames, each with a malformed captured_at (the path that used to keep every
    payload whole and log a traceback each): each a contract rejection with a clear reason, the database
    grows by at most QUARANTINE_ROW_BOUND a message, the data folder stays empty, the log stays short."""
    data_dir, log_path = tmp_path / "data", tmp_path / "ingest.log"
    baseline = database_bytes(database_url, tmp_path)  # the schema alone
    env = ingest_env(pki_dir, broker.settings.tls_port, data_dir, database_url)
    ingest = launch(env, log_path, spawned)
    store = Store(database_url)
    device = mqtt_client("cam-a")
    payload = base64.b64encode(big_jpeg())
    started = time.monotonic()

    for chunk_start in range(0, FLOOD, FLOOD_CHUNK):
        deliveries = [device.publish(topics.frame("cam-a"), payload, qos=1, user_properties=bad_time_properties(index))
                      for index in range(chunk_start, chunk_start + FLOOD_CHUNK)]
        assert all(delivery.wait(WAIT_S) for delivery in deliveries)
        handled = chunk_start + FLOOD_CHUNK
        assert wait_until(lambda: store.counts()["quarantine"] >= handled, FLOOD_WAIT_S), log_text(log_path)[-3000:]
    elapsed = time.monotonic() - started

    rows = store.db.query("SELECT reason, payload_size, payload_sha256, LENGTH(payload_head) FROM quarantine")
    assert len(rows) == FLOOD and store.counts()["frames"] == 0
    expected_digest = hashlib.sha256(payload).hexdigest()
    for reason, size, digest, head in rows:
        assert reason.startswith("frame user property captured_at must be ISO-8601 UTC"), reason
        assert (size, digest, head) == (len(payload), expected_digest, 256)
    assert folder_bytes(data_dir) == 0
    ingest.send_signal(signal.SIGTERM)
    assert ingest.wait(WAIT_S) == 0
    store.close()
    growth = database_bytes(database_url, tmp_path) - baseline
    assert growth <= FLOOD * QUARANTINE_ROW_BOUND, f"database grew {growth} bytes for {FLOOD} quarantined messages"
    assert growth < FLOOD * len(payload) / 500  # the payloads themselves were ~1 GB

    log = log_text(log_path)
    assert "Traceback" not in log and "internal error" not in log
    first_lines = len(re.findall(r"cloud.ingest: quarantined emotion/devices/cam-a/frame .*captured_at", log))
    summed = sum(int(count) for count in re.findall(r"(\d+) more like 'frame user property captured_at", log))
    assert first_lines + summed == FLOOD, log[-3000:]  # every rejection accounted for …
    intervals = 1 + int(elapsed // 60) + 1
    assert first_lines <= intervals, log[-3000:]  # … in one line per reason per minute, plus one summary each


def test_a_header_declaring_65535x65535_is_quarantined(broker, pki_dir, tmp_path, database_url, mqtt_client, topics, spawned):
    log_path = tmp_path / "ingest.log"
    launch(ingest_env(pki_dir, broker.settings.tls_port, tmp_path / "data", database_url), log_path, spawned)
    store = Store(database_url)
    device = mqtt_client("cam-a")
    small = base64.b64decode(jpeg_b64())
    for jpeg in (declaring(small, 65535, 65535), declaring(small, 8193, 64), declaring(small, 8192, 8192)):
        assert device.publish(topics.frame("cam-a"), base64.b64encode(jpeg), qos=1, user_properties=frame_properties(1)).wait(WAIT_S)
    assert wait_until(lambda: store.counts()["quarantine"] == 2 and store.counts()["frames"] == 1), log_text(log_path)
    reasons = sorted(row.reason for row in store.quarantined())
    assert reasons == ["frame too large: its JPEG header declares 65535x65535, the limit is 8192x8192",
                       "frame too large: its JPEG header declares 8193x64, the limit is 8192x8192"]
    assert store.db.query("SELECT width, height FROM frames") == [(8192, 8192)]  # the limit itself is allowed
    store.close()


def test_frames_with_the_same_millisecond_and_number_get_a_file_each(broker, pki_dir, tmp_path, database_url, mqtt_client, topics, spawned):
    """Two different frames stamped alike: two rows, two files, each with its own bytes and size.
    The same frame delivered twice is stored once, and the metrics say what the database holds."""
    data_dir, log_path = tmp_path / "data", tmp_path / "ingest.log"
    env = ingest_env(pki_dir, broker.settings.tls_port, data_dir, database_url)
    launch(env, log_path, spawned)
    store = Store(database_url)
    device = mqtt_client("cam-a")
    first, second = jpeg_b64(seed=1), jpeg_b64(seed=2, width=128, height=96)
    for payload in (first, second, second):
        assert device.publish(topics.frame("cam-a"), payload, qos=1, user_properties=frame_properties(5)).wait(WAIT_S)
    good = factories.result(seq=1)  # after the frames: once it is stored, they were handled
    assert device.publish(topics.result("cam-a"), good.to_json(), qos=1).wait(WAIT_S)
    assert wait_until(lambda: store.result_by_msg_id(good.msg_id) is not None), log_text(log_path)

    rows = store.db.query("SELECT path, size_bytes, width, height FROM frames ORDER BY width")
    assert len(rows) == 2 and rows[0][0] != rows[1][0]
    for (path, size, width, height), sent in zip(rows, (first, second)):
        assert (data_dir / path).read_bytes() == base64.b64decode(sent)
        assert size == len(base64.b64decode(sent))
    assert [(width, height) for _path, _size, width, height in rows] == [(96, 64), (128, 96)]
    assert len([path for path in data_dir.rglob("*") if path.is_file()]) == 2
    assert wait_until(lambda: 'emq_ingest_stored_total{kind="frame"} 2.0' in scrape(env)), scrape(env)
    assert "emq_ingest_duplicates_total 1.0" in scrape(env)
    store.close()


def test_a_frame_cannot_attach_itself_to_another_devices_result(broker, pki_dir, tmp_path, database_url, mqtt_client, topics, spawned):
    log_path = tmp_path / "ingest.log"
    launch(ingest_env(pki_dir, broker.settings.tls_port, tmp_path / "data", database_url), log_path, spawned)
    store = Store(database_url)
    victim, intruder = mqtt_client("cam-a"), mqtt_client("cam-b")
    stored_first, not_yet_stored = factories.result(seq=1), factories.result(seq=2)
    assert victim.publish(topics.result("cam-a"), stored_first.to_json(), qos=1).wait(WAIT_S)
    assert wait_until(lambda: store.result_by_msg_id(stored_first.msg_id) is not None), log_text(log_path)
    # cam-b names cam-a's stored result, and one of cam-a's it guessed before cam-a sent it.
    for claimed in (stored_first, not_yet_stored):
        properties = frame_properties(9, claimed)
        assert intruder.publish(topics.frame("cam-b"), jpeg_b64(seed=claimed.seq), qos=1, user_properties=properties).wait(WAIT_S)
    assert wait_until(lambda: store.counts()["frames"] == 2), log_text(log_path)
    assert victim.publish(topics.result("cam-a"), not_yet_stored.to_json(), qos=1).wait(WAIT_S)
    assert wait_until(lambda: store.result_by_msg_id(not_yet_stored.msg_id) is not None), log_text(log_path)

    links = store.db.query("SELECT result_msg_id FROM frames WHERE device_id = 'cam-b' ORDER BY id")
    # The link to cam-a's stored result was dropped (the frame itself is kept); the advance claim
    # could not be checked when it came, so it is recorded, but never followed:
    assert links == [(None,), (not_yet_stored.msg_id,)]
    assert store.frame_for_result(stored_first.msg_id) is None
    assert store.frame_for_result(not_yet_stored.msg_id) is None  # a claim made in advance is not followed either
    assert "frame from cam-b names result" in log_text(log_path)
    # cam-a's own frame for its result is linked as ever.
    assert victim.publish(topics.frame("cam-a"), jpeg_b64(seed=7), qos=1, user_properties=frame_properties(3, stored_first)).wait(WAIT_S)
    assert wait_until(lambda: store.frame_for_result(stored_first.msg_id) is not None), log_text(log_path)
    assert store.frame_for_result(stored_first.msg_id).device_id == "cam-a"
    store.close()


# -- the ingest's batch code, driven directly ------------------------------------------------------------
def frame_message(payload: bytes, properties=()) -> Message:
    return Message(topic="emotion/devices/cam-a/frame", payload=payload, qos=1, retain=False, mid=1, user_properties=tuple(properties))


@pytest.fixture
def service(tmp_path, pki_dir, database_url):
    def make(**settings) -> IngestService:
        config = IngestConfig(pki_dir=pki_dir, data_dir=tmp_path / "data", database_url=database_url, **settings)
        ingest = IngestService(config)
        ingest.open_store()
        ingest.store = Store(ingest.store.db)  # every part, on the same database: the test reads what it wrote
        made.append(ingest)
        return ingest

    made: list[IngestService] = []
    yield make
    for ingest in made:
        ingest.store.close()


def test_an_internal_error_logs_one_traceback_per_cause_and_keeps_only_the_head(service, monkeypatch, caplog):
    """A bug met by every message: each is quarantined with the cause, head and digest only; the
    traceback is logged once, the rest are counted in one summary line when the interval ends."""
    ingest = service(bad_input_log_interval_s=3600)
    payload = base64.b64encode(big_jpeg(width=320, height=240))

    def buggy_planner(device_id, message, plan, received_at):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setitem(ingest._planners, Channel.FRAME, buggy_planner)
    with caplog.at_level(logging.WARNING, logger="cloud.ingest"):
        for _ in range(10):
            ingest.process_batch([frame_message(payload) for _ in range(20)])
        ingest.bad_input_log.close()

    rows = ingest.store.quarantined(limit=1000)
    assert len(rows) == 200
    assert all(row.reason.startswith("internal error: ZeroDivisionError at test_cloud_quarantine.py:") for row in rows)
    assert all(row.payload_head == payload[:256] and row.payload_sha256 == hashlib.sha256(payload).hexdigest() for row in rows)
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert len(tracebacks) == 1
    summaries = [record.getMessage() for record in caplog.records if "more like" in record.getMessage()]
    assert len(summaries) == 2 and sum(int(line.split()[0]) for line in summaries) == 199 + 199  # errors and quarantines
    assert len(caplog.records) == 4  # traceback, first quarantine line, two summaries


def test_the_ingest_trims_quarantine_to_its_cap_between_sweeps(service):
    ingest = service(retention=RetentionSettings(quarantine_max_rows=100))
    for _ in range(10):
        ingest.process_batch([frame_message(b"%%% not base64 %%%") for _ in range(50)])
        assert ingest.store.counts()["quarantine"] <= 100 + 100  # the cap, plus what arrives before the next trim
    assert ingest.store.counts()["quarantine"] == 100
    assert ingest.store.db.scalar("SELECT MAX(id) - MIN(id) FROM quarantine") == 99  # the newest were kept


def test_retention_expires_old_quarantine_and_caps_its_rows(tmp_path, database_url):
    store = Store(database_url)
    now = time.time()
    day = 86400
    for age_days, count in ((40, 30), (10, 200)):
        store.quarantine_many([("emotion/devices/cam-a/result", "not JSON", b"x" * 1000)] * count, now - age_days * day)
    settings = RetentionSettings(quarantine_max_age_days=30, quarantine_max_rows=150)

    report = sweep(store, DataFolder(tmp_path / "data"), settings, now)

    assert report.quarantine_deleted == 30 + 50  # the old ones by age, then the oldest beyond the cap
    assert store.counts()["quarantine"] == 150
    assert store.db.scalar("SELECT MIN(received_at) FROM quarantine") == pytest.approx(now - 10 * day)
    assert sweep(store, DataFolder(tmp_path / "data"), settings, now).quarantine_deleted == 0
    store.close()


def test_an_old_database_keeps_digests_not_whole_payloads(tmp_path, database_url):
    """The migration step: a quarantine table without payload_sha256, holding a whole 1 MB payload."""
    whole, head_only = b"W" * 1_000_000, b"H" * 256
    database = Database(database_url)
    schema.migrate(database)
    database.execute("ALTER TABLE quarantine DROP COLUMN payload_sha256")
    database.executemany("INSERT INTO quarantine (received_at, topic, reason, payload_size, payload_head) VALUES (?, ?, ?, ?, ?)",
                         [(1.0, "t", "internal error", len(whole), whole), (2.0, "t", "not JSON", 5000, head_only)])
    database.close()

    store = Store(database_url)
    rows = sorted(store.quarantined(), key=lambda row: row.received_at)
    assert [(row.payload_size, bytes(row.payload_head), row.payload_sha256) for row in rows] == [
        (len(whole), whole[:256], hashlib.sha256(whole).hexdigest()), (5000, head_only, None)]
    assert store.db.scalar("SELECT MAX(LENGTH(payload_head)) FROM quarantine") == 256  # the megabyte is gone (VACUUM returns it)
    store.close()


def test_the_data_folder_never_replaces_a_file(tmp_path):
    folder = DataFolder(tmp_path / "data")
    relative = folder.relative_path("frames", "cam-a", time.time(), "frame.jpg")
    assert folder.write(relative, b"first") is True
    assert folder.write(relative, b"second, longer") is False
    assert folder.absolute(relative).read_bytes() == b"first"
    assert [path.name for path in folder.absolute(relative).parent.iterdir()] == ["frame.jpg"]  # no temporary left


def test_varied_bad_input_still_makes_a_bounded_log(caplog):
    """500 different reasons of 26 kinds (numbers do not make a kind), each seen 4 times, with room for 20
    kinds: 20 lines and the first of the rest, then one summary each."""
    logger = logging.getLogger("test.ratelimit")
    limited = RateLimitedLog(logger, interval_s=3600, max_kinds=20)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        for repeat in range(4):
            for index in range(500):
                limited.warning(f"reason number {index} kind {chr(65 + index % 26)}{index}", f"line {index}/{repeat}")
        limited.close()
    lines = [record.getMessage() for record in caplog.records]
    firsts = [line for line in lines if line.startswith("line ")]
    summaries = [line for line in lines if "more like" in line]
    assert len(firsts) == 21 and len(summaries) == 21
    assert len(firsts) + sum(int(line.split()[0]) for line in summaries) == 2000
    assert kind_of("frame too large: 5000000 bytes > 4194304") == "frame too large"
    assert kind_of("invalid device id '../x': use 1-64 of A-Z") == "invalid device id"
