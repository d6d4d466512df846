"""End-to-end delivery with the real edge, broker and ingest: what "nothing lost" means, under faults.

The guarantee as tested here: a result leaves the edge's outbox only when the
ingest's stored mark covers it, so a broker ``kill -9`` (which loses whatever it
acknowledged since its last autosave), a rolled-back outbox file and identity
takeover attempts lose nothing and store nothing twice.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from broker.config import BrokerSettings
from broker.runner import MosquittoProcess
from cloud.store import Store
from contract.messages import StoredMark
from contract.topics import Channel
from tests import factories
from tests.cloud_helpers import ingest_env, start_ingest
from tests.conftest import WAIT_S, free_port, media_file, subscribe_and_wait, wait_until
from tests.edge_helpers import agent_env, outbox_depth, produced_by_epoch, start_agent

pytestmark = pytest.mark.slow

RUN_S = 180.0


@pytest.fixture
def broker_settings(pki_dir: Path, tmp_path: Path) -> BrokerSettings:
    """This module's broker never autosaves during a test: a kill -9 loses every message it held in memory."""
    return BrokerSettings(
        pki_dir=pki_dir, state_dir=tmp_path / "broker", bind_address="127.0.0.1",
        tls_port=free_port(), password_port=free_port(), autosave_interval_s=3600,
    )


class Cloud:
    """The real ingest as a process, started and stopped by the test, on one SQLite database."""

    def __init__(self, broker: MosquittoProcess, pki_dir: Path, tmp_path: Path, spawned: list) -> None:
        self.url = f"sqlite:///{tmp_path / 'cloud.db'}"
        self.env = ingest_env(pki_dir, broker.settings.tls_port, tmp_path / "cloud", self.url)
        self.log = tmp_path / "ingest.log"
        self.spawned = spawned
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        before = self.text().count("subscriptions active")
        self.process = start_ingest(self.env, self.log)
        self.spawned.append(self.process)
        assert wait_until(lambda: self.text().count("subscriptions active") > before, WAIT_S * 2), self.text()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(WAIT_S * 2) == 0, self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stored(self, device_id: str = "cam-a") -> list[tuple[str, int, str]]:
        store = Store(self.url)
        try:
            return store.db.query("SELECT epoch, seq, msg_id FROM results WHERE device_id = ? ORDER BY epoch, seq", (device_id,))
        finally:
            store.close()


def assert_each_result_stored_once(cloud: Cloud, produced: dict[str, int]) -> None:
    rows = cloud.stored()
    per_epoch: dict[str, list[int]] = {}
    for epoch, seq, _msg_id in rows:
        per_epoch.setdefault(epoch, []).append(seq)
    assert {epoch: len(seqs) for epoch, seqs in per_epoch.items()} == produced
    for epoch, seqs in per_epoch.items():
        assert seqs == list(range(produced[epoch])), f"epoch {epoch}: gaps or repeats"
    assert len({msg_id for *_rest, msg_id in rows}) == len(rows)


def run_agent(spawned, env, log: Path, *arguments: str) -> subprocess.Popen:
    process = start_agent(env, log, *arguments)
    spawned.append(process)
    return process


def test_broker_kill_9_while_results_wait_for_an_offline_ingest_loses_nothing(
    broker, pki_dir, tmp_path, mqtt_client, topics, spawned
):
    cloud = Cloud(broker, pki_dir, tmp_path, spawned)
    cloud.start()  # creates the ingest's persistent session in the broker...
    cloud.stop()   # ...which now queues results for it, in memory only
    data_dir = tmp_path / "edge"
    env = agent_env(pki_dir, broker.settings.tls_port, data_dir, OUTBOX__KEEP_UNTIL="stored",
                    SOURCE__PACE="true", OUTBOX__FLUSH_TIMEOUT_S="1")
    watcher = subscribe_and_wait(mqtt_client("monitor"), topics.result("cam-a"))
    agent = run_agent(spawned, env, tmp_path / "agent.log", "--source", str(media_file("woman2.mp4")))
    assert wait_until(lambda: len(watcher.messages) >= 100 or agent.poll() is not None, RUN_S)
    assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-3000:]

    broker.kill()  # kill -9: everything it acknowledged is gone with it
    assert outbox_depth(data_dir) >= 100, "the agent forgot results the cloud never stored"
    broker.start()

    assert agent.wait(RUN_S) == 0  # end of input; what the cloud did not confirm stays in the outbox
    waiting = outbox_depth(data_dir)
    produced = produced_by_epoch(data_dir)
    assert waiting == sum(produced.values()) >= 400, "rows left the outbox without being stored"

    cloud.start()
    env["EMQ_EDGE__OUTBOX__FLUSH_TIMEOUT_S"] = "20"  # the restarted agent resends everything, then waits for the marks
    agent = run_agent(spawned, env, tmp_path / "agent.log", "--source", str(media_file("justin.jpg")))
    assert agent.wait(RUN_S) == 0
    produced = produced_by_epoch(data_dir)
    assert wait_until(lambda: outbox_depth(data_dir) == 0, WAIT_S * 3), f"{outbox_depth(data_dir)} left in the outbox"
    assert_each_result_stored_once(cloud, produced)


def test_the_running_edge_resends_when_the_ingest_comes_back_after_a_broker_crash(
    broker, pki_dir, tmp_path, mqtt_client, topics, spawned
):
    """No restart of the edge: the ingest's 'online' (and the reconnect) make it resend what the broker lost."""
    cloud = Cloud(broker, pki_dir, tmp_path, spawned)
    cloud.start()
    cloud.stop()
    data_dir = tmp_path / "edge"
    env = agent_env(pki_dir, broker.settings.tls_port, data_dir, OUTBOX__KEEP_UNTIL="stored", SOURCE__PACE="true")
    agent = run_agent(spawned, env, tmp_path / "agent.log", "--source", str(media_file("woman2.mp4")))
    assert wait_until(lambda: outbox_depth(data_dir) >= 60 or agent.poll() is not None, RUN_S)
    assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-3000:]
    broker.kill()
    broker.start()
    cloud.start()  # while the agent still runs
    assert agent.wait(RUN_S) == 0, (tmp_path / "agent.log").read_text()[-3000:]
    assert outbox_depth(data_dir) == 0
    assert_each_result_stored_once(cloud, produced_by_epoch(data_dir))
    assert "sending again" in (tmp_path / "agent.log").read_text()


def test_a_rolled_back_outbox_stores_nothing_twice(broker, pki_dir, tmp_path, spawned):
    """Power loss can restore an older outbox file: its rows are resent (stored once), new results get a new epoch."""
    cloud = Cloud(broker, pki_dir, tmp_path, spawned)
    data_dir = tmp_path / "edge"
    outbox_file = data_dir / "cam-a" / "outbox.db"
    offline = agent_env(pki_dir, broker.settings.tls_port, data_dir, OUTBOX__KEEP_UNTIL="stored",
                        OUTBOX__FLUSH_TIMEOUT_S="1", OUTBOX__DURABILITY="full")
    env = {**offline, "EMQ_EDGE__OUTBOX__FLUSH_TIMEOUT_S": "20"}
    video = str(media_file("test.mp4"))
    assert run_agent(spawned, offline, tmp_path / "agent.log", "--source", video).wait(RUN_S) == 0  # no ingest: all kept
    older = tmp_path / "older-outbox.db"
    shutil.copy(outbox_file, older)
    first_run = produced_by_epoch(data_dir)
    first_run_total = sum(first_run.values())
    assert outbox_depth(data_dir) == first_run_total > 10

    cloud.start()
    assert run_agent(spawned, env, tmp_path / "agent.log", "--source", video).wait(RUN_S) == 0
    assert wait_until(lambda: outbox_depth(data_dir) == 0, WAIT_S * 3)
    two_runs = produced_by_epoch(data_dir)

    shutil.copy(older, outbox_file)  # the roll-back: the second run never happened, as far as the file knows
    for suffix in ("-wal", "-shm"):
        Path(f"{outbox_file}{suffix}").unlink(missing_ok=True)
    assert run_agent(spawned, env, tmp_path / "agent.log", "--source", video).wait(RUN_S) == 0
    assert wait_until(lambda: outbox_depth(data_dir) == 0, WAIT_S * 3)
    third_run = {epoch: count for epoch, count in produced_by_epoch(data_dir).items() if epoch not in first_run}
    assert len(third_run) == 1  # the restored file knows the first run and the third

    produced = {**two_runs, **third_run}
    # The restored rows (epoch of the first run) are either resent and skipped by the ingest as
    # duplicates, or forgotten at once when the retained stored mark for their epoch arrives
    # first: which one depends on timing, and both are right. What must hold: stored once each.
    assert_each_result_stored_once(cloud, produced)
    cloud.stop()


def test_stored_marks_are_published_only_by_the_ingest_and_read_by_their_device(broker, mqtt_client, topics):
    mark = StoredMark(device_id="cam-a", epoch="e1", seq=3, stored_at="2026-12-02T18:00:00.000Z").to_json()
    device_b = mqtt_client("cam-b")
    reader_a = subscribe_and_wait(mqtt_client("cam-a"), topics.stored("cam-a"))
    for forger in (device_b, mqtt_client("webui")):
        forger.publish(topics.stored("cam-a"), b"forged", qos=1).wait(WAIT_S)  # refused by the ACL
    reader_b = subscribe_and_wait(device_b, topics.stored("cam-a"))
    assert mqtt_client("ingest").publish(topics.stored("cam-a"), mark, qos=1, retain=True).wait(WAIT_S)
    assert reader_a.wait_for(lambda messages: [m.payload for m in messages] == [mark])
    assert not reader_b.wait_for(lambda messages: messages, timeout=1.0)


# -- identities: a client id belongs to its certificate ---------------------------------------------
def test_a_device_cannot_take_over_another_devices_session(broker, mqtt_client, topics):
    victim = mqtt_client("cam-b", clean_start=False, session_expiry_s=600)
    status = subscribe_and_wait(mqtt_client("monitor"), topics.status("cam-b"))
    commands = subscribe_and_wait(victim, topics.command("cam-b"))
    attacker = mqtt_client("cam-a", client_id="cam-b", start=False)
    attacker.start()
    assert attacker.wait_connected(WAIT_S)  # connected, but as itself: the broker made its client id cam-a
    assert mqtt_client("webui").publish(topics.command("cam-b"), b'{"probe": 1}', qos=1).wait(WAIT_S)
    assert commands.wait_for(lambda messages: messages), "the victim lost its session"
    assert victim.connected and victim.connect_count == 1
    assert b"offline" not in [message.payload for message in status.messages]


def test_a_device_cannot_take_over_an_ingest_workers_session(broker, pki_dir, tmp_path, mqtt_client, topics, spawned):
    cloud = Cloud(broker, pki_dir, tmp_path, spawned)
    cloud.start()
    cloud.stop()  # the worker's persistent session now queues for it
    device = mqtt_client("cam-b")
    results = [factories.result("cam-b", seq) for seq in range(20)]
    for result in results:
        assert device.publish(topics.result("cam-b"), result.to_json(), qos=1).wait(WAIT_S)
    attacker = mqtt_client("cam-a", client_id="ingest", clean_start=True, start=False)
    attacker.subscribe(topics.all_devices(Channel.RESULT), lambda message: None)
    attacker.start()
    assert attacker.wait_connected(WAIT_S)
    cloud.start()
    assert wait_until(lambda: len(cloud.stored("cam-b")) == 20, WAIT_S * 3), f"{len(cloud.stored('cam-b'))} of 20 stored"
