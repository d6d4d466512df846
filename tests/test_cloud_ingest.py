"""Cloud ingest against a real broker and real databases (SQLite, PostgreSQL when reachable)."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import urllib.request

import pytest

from cloud.store import Store
from contract.messages import FRAME_CONTENT_TYPE
from tests import factories
from tests.cloud_helpers import database_url, frame_properties, ingest_env, jpeg_b64, start_ingest  # noqa: F401 (fixture)
from tests.conftest import WAIT_S, console_script, wait_until

STREAM_WAIT_S = 60.0


def launch(spawned, env, tmp_path, name: str = "ingest", *arguments: str, wait: bool = True) -> subprocess.Popen:
    """Start an ingest worker; by default wait until its subscriptions are acknowledged."""
    log_path = tmp_path / f"{name}.log"
    already = log_path.read_text().count("subscriptions active") if log_path.exists() else 0
    process = start_ingest(env, log_path, *arguments)
    spawned.append(process)
    if wait:
        assert wait_until(lambda: log_path.read_text().count("subscriptions active") > already, WAIT_S), log_of(tmp_path, name)
    return process


def log_of(tmp_path, name: str = "ingest") -> str:
    path = tmp_path / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def stored_count(store: Store, table: str = "results") -> int:
    return store.counts()[table]


def test_results_frames_status_and_stats_are_stored(broker, pki_dir, tmp_path, database_url, mqtt_client, topics, spawned):
    data_dir = tmp_path / "data"
    launch(spawned, ingest_env(pki_dir, broker.settings.tls_port, data_dir, database_url), tmp_path)
    store = Store(database_url)
    device = mqtt_client("cam-a")

    result = factories.result(faces=[factories.face(1), factories.face(2, box=(200, 100, 80, 80), top=0)])
    assert device.publish(topics.result("cam-a"), result.to_json(), qos=1).wait(WAIT_S)
    device.publish(topics.frame("cam-a"), jpeg_b64(), qos=1, user_properties=frame_properties(7, result), content_type=FRAME_CONTENT_TYPE)
    device.publish(topics.status("cam-a"), b"online", qos=1, retain=True)
    assert wait_until(lambda: store.counts()["frames"] == 1 and store.counts()["results"] == 1), log_of(tmp_path)
    assert wait_until(lambda: (store.devices() or [None])[0] is not None and store.devices()[0].status == "online")

    row, faces = store.result(store.results()[0].id)
    assert row.msg_id == result.msg_id and row.top_label == result.emotion_text
    assert [face.label for face in faces] == [face.label for face in result.faces]
    assert all(face.has_crop and store.crop_png(face.id) == base64.b64decode(sent.crop_png_b64) for face, sent in zip(faces, result.faces))
    document = json.loads(store.db.scalar("SELECT document FROM results"))
    assert "crop_png_b64" not in document["faces"][0] and document["faces"][0]["probabilities"] == json.loads(result.to_json())["faces"][0]["probabilities"]
    frame = store.frame_for_result(result.msg_id)
    assert frame is not None and (frame.width, frame.height) == (96, 64)
    assert (data_dir / frame.path).read_bytes()[:3] == b"\xff\xd8\xff"
    assert re.fullmatch(r"frames/cam-a/\d{4}-\d{2}-\d{2}/\d{9}-f7-[0-9a-f]{32}\.jpg", frame.path)
    store.close()


def test_redelivered_result_is_stored_once(broker, pki_dir, tmp_path, database_url, mqtt_client, topics, spawned):
    launch(spawned, ingest_env(pki_dir, broker.settings.tls_port, tmp_path / "data", database_url), tmp_path)
    store = Store(database_url)
    device = mqtt_client("cam-a")
    first, second = factories.result(seq=1), factories.result(seq=2)
    for payload in (first.to_json(), first.to_json(), second.to_json(), first.to_json()):
        assert device.publish(topics.result("cam-a"), payload, qos=1).wait(WAIT_S)
    assert wait_until(lambda: stored_count(store) == 2), log_of(tmp_path)
    assert wait_until(lambda: '"duplicates": 2' in log_of(tmp_path)), log_of(tmp_path)
    assert stored_count(store, "faces") == 2
    store.close()


def test_stream_survives_ingest_kills_and_a_broker_restart(broker, pki_dir, tmp_path, mqtt_client, topics, spawned):
    """2,000 results; the ingest is SIGKILLed twice and the broker restarted once: each stored exactly once."""
    database = f"sqlite:///{tmp_path / 'cloud.db'}"
    env = ingest_env(pki_dir, broker.settings.tls_port, tmp_path / "data", database)
    ingest = launch(spawned, env, tmp_path)
    store = Store(database)
    device = mqtt_client("cam-a")
    results = [factories.result(seq=seq, faces=[factories.face(1, seed=seq)]) for seq in range(2000)]
    deliveries = []

    def publish(start: int, stop: int) -> None:
        deliveries.extend(device.publish(topics.result("cam-a"), result.to_json(), qos=1) for result in results[start:stop])

    publish(0, 500)
    assert wait_until(lambda: stored_count(store) >= 200, STREAM_WAIT_S), log_of(tmp_path)
    ingest.send_signal(signal.SIGKILL)  # first kill, mid-stream
    ingest.wait(WAIT_S)
    publish(500, 900)
    ingest = launch(spawned, env, tmp_path, wait=False)
    assert wait_until(lambda: stored_count(store) >= 700, STREAM_WAIT_S), log_of(tmp_path)

    broker.restart()  # sessions and queued messages persist
    publish(900, 1500)
    assert wait_until(lambda: stored_count(store) >= 1100, STREAM_WAIT_S), log_of(tmp_path)
    ingest.send_signal(signal.SIGKILL)  # second kill
    ingest.wait(WAIT_S)
    publish(1500, 2000)
    assert all(delivery.wait(STREAM_WAIT_S) and delivery.acknowledged for delivery in deliveries)
    launch(spawned, env, tmp_path, wait=False)

    assert wait_until(lambda: stored_count(store) >= 2000, STREAM_WAIT_S), f"{stored_count(store)} stored\n{log_of(tmp_path)[-3000:]}"
    seqs = [row[0] for row in store.db.query("SELECT seq FROM results ORDER BY seq")]
    assert seqs == list(range(2000))
    assert stored_count(store, "faces") == 2000
    assert stored_count(store, "quarantine") == 0
    store.close()


@pytest.mark.parametrize("workers", [2])
def test_shared_subscription_workers_store_a_stream_once(broker, pki_dir, tmp_path, database_url, mqtt_client, topics, spawned, workers):
    names = [str(index + 1) for index in range(workers)]  # identities ingest-1, ingest-2 of the test PKI
    for name in names:
        env = ingest_env(pki_dir, broker.settings.tls_port, tmp_path / "data", database_url, WORKER_NAME=name, SHARED_GROUP="ingest")
        launch(spawned, env, tmp_path, name)
    store = Store(database_url)
    device = mqtt_client("cam-a")
    deliveries = [device.publish(topics.result("cam-a"), factories.result(seq=seq).to_json(), qos=1) for seq in range(1000)]
    assert all(delivery.wait(STREAM_WAIT_S) for delivery in deliveries)
    assert wait_until(lambda: stored_count(store) == 1000, STREAM_WAIT_S)
    for process in spawned:
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 0
    per_worker = [totals_of(log_of(tmp_path, name)) for name in names]
    assert sum(totals["results"] for totals in per_worker) == 1000
    assert all(totals["results"] > 0 for totals in per_worker), per_worker  # the stream was really shared
    assert all(totals["duplicates"] == 0 for totals in per_worker)
    store.close()


def test_a_retired_worker_hands_in_what_the_broker_held_for_it(broker, pki_dir, tmp_path, mqtt_client, topics, spawned):
    """A stopped worker's persistent session keeps its share of a shared subscription; `--retire` stores that
    share and ends the session, so nothing waits for a worker that will not come back."""
    database = f"sqlite:///{tmp_path / 'cloud.db'}"
    envs = {name: ingest_env(pki_dir, broker.settings.tls_port, tmp_path / "data", database, WORKER_NAME=name, SHARED_GROUP="ingest")
            for name in ("1", "2")}
    staying = launch(spawned, envs["1"], tmp_path, "1")
    leaving = launch(spawned, envs["2"], tmp_path, "2")
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(WAIT_S) == 0
    store = Store(database)
    device = mqtt_client("cam-a")
    published = [device.publish(topics.result("cam-a"), factories.result(seq=seq).to_json(), qos=1) for seq in range(600)]
    assert all(delivery.wait(STREAM_WAIT_S) for delivery in published)
    assert wait_until(lambda: stored_count(store) >= 200, STREAM_WAIT_S)
    assert stored_count(store) < 600, "the stopped worker's share should be waiting in its session"

    retirement = subprocess.run([console_script("emq-ingest"), "--retire"], env=envs["2"], capture_output=True, text=True, timeout=120)
    assert retirement.returncode == 0, retirement.stderr[-2000:]
    held = int(re.search(r"stored (\d+) results", retirement.stdout).group(1))
    assert held > 0
    assert wait_until(lambda: stored_count(store) == 600, STREAM_WAIT_S)

    later = [device.publish(topics.result("cam-a"), factories.result(seq=seq).to_json(), qos=1) for seq in range(600, 700)]
    assert all(delivery.wait(STREAM_WAIT_S) for delivery in later)
    assert wait_until(lambda: stored_count(store) == 700, STREAM_WAIT_S), "new messages still went to the retired worker"
    assert staying.poll() is None
    store.close()


def test_retiring_a_worker_that_still_runs_is_refused_and_loses_nothing(broker, pki_dir, tmp_path, mqtt_client, topics, spawned):
    database = f"sqlite:///{tmp_path / 'cloud.db'}"
    env = ingest_env(pki_dir, broker.settings.tls_port, tmp_path / "data", database, WORKER_NAME="2", SHARED_GROUP="ingest")
    running = launch(spawned, env, tmp_path, "2")
    retirement = subprocess.run([console_script("emq-ingest"), "--retire"], env=env, capture_output=True, text=True, timeout=120)
    assert retirement.returncode == 4, retirement.stdout + retirement.stderr[-2000:]
    assert "still running" in retirement.stderr
    store = Store(database)
    device = mqtt_client("cam-a")
    published = [device.publish(topics.result("cam-a"), factories.result(seq=seq).to_json(), qos=1) for seq in range(50)]
    assert all(delivery.wait(STREAM_WAIT_S) for delivery in published)
    assert wait_until(lambda: stored_count(store) == 50, STREAM_WAIT_S), "the worker lost its subscription"
    assert running.poll() is None
    store.close()


def totals_of(log_text: str) -> dict:
    """The last 'ingest totals' line a worker logged."""
    line = [line for line in log_text.splitlines() if "ingest totals:" in line][-1]
    return json.loads(line.split("ingest totals: ", 1)[1])


def test_metrics_are_scraped_and_edge_stats_bridged(broker, pki_dir, tmp_path, mqtt_client, topics, spawned):
    database = f"sqlite:///{tmp_path / 'cloud.db'}"
    env = ingest_env(pki_dir, broker.settings.tls_port, tmp_path / "data", database)
    launch(spawned, env, tmp_path)
    store = Store(database)
    device = mqtt_client("cam-a")
    stats = {
        "schema": "emotion.stats/1", "device_id": "cam-a", "sent_at": "2026-11-22T03:47:13.123Z", "uptime_s": 5, "fps": 12.5,
        "frames_processed": 60, "frames_dropped": 2, "results_published": 58, "outbox_depth": 3, "outbox_dropped": 0,
        "stage_ms": {"detect": 4.5}, "model": {"name": "m", "version": "1.0.0"}, "source": "file:x", "paused": False,
    }
    for payload, topic in ((factories.result(seq=1).to_json(), topics.result("cam-a")), (b"not json", topics.result("cam-a")),
                           (json.dumps(stats).encode(), topics.stats("cam-a")), (b"online", topics.status("cam-a"))):
        assert device.publish(topic, payload, qos=1).wait(WAIT_S)
    assert wait_until(lambda: store.counts()["quarantine"] == 1 and store.devices() and store.devices()[0].last_stats)
    url = f"http://127.0.0.1:{env['EMQ_INGEST__METRICS_PORT']}/metrics"

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    assert wait_until(lambda: 'emq_edge_online{device="cam-a"} 1.0' in scrape())
    text = scrape()
    assert 'emq_ingest_stored_total{kind="result"} 1.0' in text
    assert "emq_ingest_quarantined_total 1.0" in text
    assert 'emq_edge_fps{device="cam-a"} 12.5' in text and 'emq_edge_stage_seconds{device="cam-a",stage="detect"} 0.0045' in text
    store.close()
