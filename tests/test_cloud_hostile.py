"""Bad input never crashes the ingest, never loses good data, never writes outside the data folder."""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.config import IngestConfig, RetentionSettings
from cloud.files import DataFolder, UnsafePath
from cloud.ingest import IngestService
from cloud.retention import sweep
from cloud.store import NewFrame, Store
from comms.mqtt import Message
from contract.topics import Channel
from tests import factories
from tests.cloud_helpers import ingest_env, jpeg_b64, start_ingest
from tests.conftest import WAIT_S, wait_until

FUZZ_EXAMPLES = 1000

# Each mutation makes a valid result invalid in one way the contract must catch.
MUTATIONS = [
    ("epoch", "../x"), ("epoch", ""), ("epoch", 7), ("epoch", "e" * 65),
    ("seq", -1), ("seq", "1"), ("seq", 1.5), ("seq", None), ("seq", True),
    ("device_id", "../../etc"), ("device_id", "cam-b"), ("device_id", "cam-a/#"), ("device_id", ""), ("device_id", "a" * 100),
    ("msg_id", "not-a-uuid"), ("captured_at", "yesterday"), ("timestamp", 1234567890),
    ("faces", "none"), ("faces", [{}]), ("faces", [None]), ("frame", {"width": 0, "height": 1}),
    ("schema", "emotion.result/3"), ("emotion_text", "bored"), ("source", "x" * 600), ("injected", 1),
    ("model", {"name": "", "version": "1"}), ("frame_number", -5),
]
FACE_MUTATIONS = [
    ("probabilities.angry", float("nan")), ("probabilities.angry", float("inf")), ("probabilities.contempt", 0.0),
    ("probabilities.happy", 2.0), ("crop_png_b64", "%%%not-base64%%%"), ("crop_png_b64", base64.b64encode(b"GIF89a....").decode()),
    ("box.w", 0), ("box.x", 10_000), ("label", "sad"), ("confidence", 0.01), ("track_id", -1),
]
REQUIRED = ["schema", "device_id", "epoch", "seq", "msg_id", "captured_at", "source", "frame_number", "frame", "model", "faces",
            "video_file", "emotion_probability", "emotion_text", "timestamp"]


def set_path(document: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        document = document[key]
    document[last] = value


def mutated_result(draw) -> bytes:
    document = factories.result_dict(seq=0)
    kind = draw(st.sampled_from(["field", "face", "drop"]))
    if kind == "field":
        path, value = draw(st.sampled_from(MUTATIONS))
        set_path(document, path, value)
    elif kind == "face":
        path, value = draw(st.sampled_from(FACE_MUTATIONS))
        set_path(document["faces"][0], path, value)
    else:
        del document[draw(st.sampled_from(REQUIRED))]
    return json.dumps(document, allow_nan=True).encode()


@st.composite
def hostile_message(draw) -> tuple[str, bytes]:
    """A (channel, payload) pair that must end in quarantine."""
    choice = draw(st.sampled_from(["binary", "json", "mutated", "frame_text", "frame_garbage_jpeg", "status", "stats"]))
    if choice == "binary":
        return "result", draw(st.binary(min_size=0, max_size=2048))
    if choice == "json":
        value = draw(st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
            max_leaves=15,
        ))
        return "result", json.dumps(value).encode()
    if choice == "mutated":
        return "result", mutated_result(draw)
    if choice == "frame_text":
        return "frame", draw(st.text(min_size=1, max_size=200)).encode() + b"!"
    if choice == "frame_garbage_jpeg":
        return "frame", base64.b64encode(b"\xff\xd8\xff" + draw(st.binary(min_size=0, max_size=512)))
    if choice == "status":
        return "status", draw(st.text(max_size=40).filter(lambda text: text not in ("online", "offline", "stopped"))).encode()
    return "stats", json.dumps(draw(st.dictionaries(st.text(max_size=10), st.integers(), max_size=5))).encode()


def test_fuzzed_stream_is_quarantined_and_good_data_is_kept(broker, pki_dir, tmp_path, mqtt_client, topics):
    """≥1,000 hostile payloads, each followed by a good result, through the real broker into a running ingest."""
    database = f"sqlite:///{tmp_path / 'cloud.db'}"
    data_dir = tmp_path / "data"
    ingest = start_ingest(ingest_env(pki_dir, broker.settings.tls_port, data_dir, database, BATCH_WAIT_MS="0"), tmp_path / "ingest.log")
    try:
        assert wait_until(lambda: "subscriptions active" in (tmp_path / "ingest.log").read_text(), WAIT_S)
        store = Store(database)
        device = mqtt_client("cam-a")
        sent = []

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(hostile=hostile_message())
        def send_pair(hostile):
            channel, payload = hostile
            before = store.counts()
            good = factories.result(seq=len(sent))
            assert device.publish(topics.device("cam-a", Channel(channel)), payload, qos=1).wait(WAIT_S)
            assert device.publish(topics.result("cam-a"), good.to_json(), qos=1).wait(WAIT_S)
            sent.append(good.msg_id)
            # The good result comes after the hostile one, so once it is stored both were handled.
            assert wait_until(lambda: store.result_by_msg_id(good.msg_id) is not None, WAIT_S, interval=0.002), "good result lost"
            after = store.counts()
            assert after["results"] == before["results"] + 1, f"hostile {channel} payload was stored: {payload[:80]!r}"
            assert after["quarantine"] == before["quarantine"] + 1, f"hostile {channel} payload not quarantined: {payload[:80]!r}"

        send_pair()
        assert len(sent) >= FUZZ_EXAMPLES
        assert ingest.poll() is None, "ingest crashed"
        stored_ids = {row[0] for row in store.db.query("SELECT msg_id FROM results")}
        assert stored_ids == set(sent)
        reasons = store.db.query("SELECT reason, topic FROM quarantine")
        assert len(reasons) == len(sent) and all(reason and topic.startswith("emotion/devices/cam-a/") for reason, topic in reasons)
        assert outside_files(tmp_path, data_dir) == set(), "files written outside the data folder"
        ingest.send_signal(signal.SIGTERM)
        assert ingest.wait(WAIT_S) == 0
        store.close()
    finally:
        if ingest.poll() is None:
            ingest.kill()


def outside_files(tmp_path: Path, data_dir: Path) -> set[Path]:
    """Files under tmp_path that are neither the database, the log, nor inside the data folder."""
    allowed_names = {"cloud.db", "cloud.db-wal", "cloud.db-shm", "ingest.log"}
    found = set()
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_relative_to(data_dir) and path.name not in allowed_names and "broker" not in path.parts:
            found.add(path)
    return found


@pytest.fixture
def service(tmp_path, pki_dir):
    config = IngestConfig(pki_dir=pki_dir, data_dir=tmp_path / "sandbox" / "data", database_url=f"sqlite:///{tmp_path / 'sandbox' / 'cloud.db'}")
    ingest = IngestService(config)
    ingest.open_store()
    ingest.store = Store(ingest.store.db)  # every part, on the same database: the test reads what it wrote
    yield ingest
    ingest.store.close()


HOSTILE_TOPICS = [
    "emotion/devices/../frame",
    "emotion/devices/..%2F..%2Fetc/frame",
    "emotion/devices/.hidden/result",
    "emotion/devices/a b/result",
    "emotion/devices/cam\x00a/frame",
    "emotion/devices/" + "x" * 300 + "/frame",
    "emotion/devices/cam-a/../../frame",
    "emotion/devices/cam-a/frame/../../../escape",
    "emotion/models/release",
]


def message(topic: str, payload: bytes, properties=()) -> Message:
    return Message(topic=topic, payload=payload, qos=1, retain=False, mid=1, user_properties=tuple(properties))


def test_path_traversal_attempts_write_nothing_outside(service, tmp_path):
    sandbox = tmp_path / "sandbox"
    hostile_properties = [("frame_number", "../../../../tmp/owned"), ("captured_at", "2026-11-22T03:47:13.123Z")]
    batch = [message(topic, jpeg_b64()) for topic in HOSTILE_TOPICS]
    batch.append(message("emotion/devices/cam-a/frame", jpeg_b64(), hostile_properties))
    document = factories.result_dict()
    document["device_id"] = "../../../etc"
    batch.append(message("emotion/devices/cam-a/result", json.dumps(document).encode()))
    good = factories.result()
    batch.append(message("emotion/devices/cam-a/result", good.to_json()))
    before = set(tmp_path.parent.rglob("owned*"))

    service.process_batch(batch)

    counts = service.store.counts()
    assert counts["quarantine"] == len(batch) - 1 and counts["results"] == 1
    assert all(reason for (reason,) in service.store.db.query("SELECT reason FROM quarantine"))
    written = [path for path in sandbox.rglob("*") if path.is_file() and path.parent != sandbox]
    assert written == [], written  # every frame above was hostile: nothing may be written at all
    assert set(tmp_path.parent.rglob("owned*")) == before


def test_data_folder_refuses_escapes(tmp_path):
    folder = DataFolder(tmp_path / "data")
    for device_id in ("..", "../x", "a/b", ".hidden"):
        with pytest.raises(Exception):
            folder.relative_path("frames", device_id, time.time(), "x.jpg")
    for name in ("../x.jpg", ".x", "a/b.jpg"):
        with pytest.raises(UnsafePath):
            folder.relative_path("frames", "cam-a", time.time(), name)
    with pytest.raises(UnsafePath):
        folder.write(Path("../escape.jpg"), b"x")
    assert not (tmp_path / "escape.jpg").exists()


def test_a_database_outage_is_retried_not_acknowledged(service):
    """A failing commit raises out of process_batch, so the caller does not ack (and retries)."""
    good = factories.result()
    service.store.db.execute("DROP TABLE faces")
    with pytest.raises(Exception):
        service.process_batch([message("emotion/devices/cam-a/result", good.to_json())])
    assert service.store.db.scalar("SELECT COUNT(*) FROM results") == 0


def test_oversized_frame_is_quarantined(service):
    service.process_batch([message("emotion/devices/cam-a/frame", b"A" * (4 * 1024 * 1024 + 4))])
    assert "too large" in service.store.quarantined()[0].reason


def test_retention_keeps_labelled_crops_and_caps_frames(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'cloud.db'}")
    files = DataFolder(tmp_path / "data")
    now = time.time()
    day = 86400
    for index, (age_days, size) in enumerate([(40, 1000), (10, 3_000_000), (5, 3_000_000), (1, 3_000_000)]):
        relative = files.relative_path("frames", "cam-a", now - age_days * day, f"f{index}.jpg")
        files.write(relative, b"\xff" * size)
        store.add_frame(NewFrame("cam-a", index, now - age_days * day, None, 1, 1, size, relative.as_posix()), now - age_days * day)
    old = factories.result(faces=[factories.face(1), factories.face(2, box=(200, 100, 80, 80))])
    with store.transaction():
        store.add_result(old, now, [face.crop_png for face in old.faces], "{}")
    store.db.execute("UPDATE faces SET captured_at = ?", (now - 400 * day,))
    labelled_face = store.label_queue()[0]
    store.add_label(labelled_face.id, "happy", "alice")

    report = sweep(store, files, RetentionSettings(frame_max_age_days=30, frame_max_bytes_per_device=5_000_000, crop_max_age_days=365), now)

    remaining = store.db.query("SELECT frame_number FROM frames ORDER BY frame_number")
    assert remaining == [(3,)]  # 40-day frame expired; then the oldest went until under 5 MB
    assert report.frames_deleted == 3 and report.crops_deleted == 1
    assert store.crop_png(labelled_face.id).startswith(b"\x89PNG")
    assert store.label_progress() == (1, 1)  # one labelled crop left, the unlabelled one is gone
    store.close()


def test_truncated_and_fake_jpeg_frames_are_quarantined(service):
    whole = base64.b64decode(jpeg_b64())
    service.process_batch([
        message("emotion/devices/cam-a/frame", base64.b64encode(whole[: len(whole) // 2])),
        message("emotion/devices/cam-a/frame", base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9")),
        message("emotion/devices/cam-a/frame", base64.b64encode(whole)),
    ])
    reasons = [row.reason for row in service.store.quarantined()]
    assert len(reasons) == 2 and all("JPEG" in reason for reason in reasons)
    assert service.store.counts()["frames"] == 1


def test_a_fault_outside_the_database_quarantines_only_the_culprit(service, monkeypatch):
    """If the bulk write trips on something that is not the database (a bug), the batch is stored
    message by message: the good messages land, the culprit is quarantined with its cause."""
    good = factories.result()
    frame_payload = jpeg_b64()
    real_add_frames = service.store.add_frames

    def add_frames_failing_on_camera_b(frames, received_at):
        if any(frame.device_id == "cam-b" for frame in frames):
            raise RuntimeError("simulated bug")
        return real_add_frames(frames, received_at)

    monkeypatch.setattr(service.store, "add_frames", add_frames_failing_on_camera_b)
    service.process_batch([
        message("emotion/devices/cam-a/result", good.to_json()),
        message("emotion/devices/cam-b/frame", frame_payload),
        message("emotion/devices/cam-a/frame", frame_payload),
    ])

    counts = service.store.counts()
    assert counts["results"] == 1 and counts["frames"] == 1 and counts["quarantine"] == 1
    (quarantined,) = service.store.quarantined()
    assert quarantined.topic == "emotion/devices/cam-b/frame" and "simulated bug" in quarantined.reason
    assert quarantined.payload_size == len(frame_payload)
    assert "RuntimeError at test_cloud_hostile.py" in quarantined.reason  # the cause: type and place
    # Its head and digest, never the whole payload (a flood of these must not fill the disk).
    assert quarantined.payload_head == frame_payload[:256] and quarantined.payload_sha256 == hashlib.sha256(frame_payload).hexdigest()
    assert service.counters.quarantined == 1 and service.counters.stored["frame"] == 1
