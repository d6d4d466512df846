"""Operational behaviour: timings, exit codes, backoff, logs of clients, broker and edge (real processes)."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from broker.config import BrokerSettings, render_conf
from comms.settings import MqttSettings
from common.backoff import JITTER, backoff_delay
from contract.validation import parse_stats
from edge.sources import ImageFolderSource, SourceError
from tests.conftest import WAIT_S, console_script, media_file, subscribe_and_wait, wait_until
from tests.edge_helpers import agent_env, start_agent


def folder_of_faces(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        shutil.copy(media_file("justin.jpg"), folder / f"{index}.jpg")
    return folder


# -- reconnect backoff ------------------------------------------------------------


def test_backoff_doubles_from_the_minimum_up_to_the_cap():
    nominal = [backoff_delay(attempt, 0.5, 5.0, chance=0.0) for attempt in range(8)]
    assert nominal == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert backoff_delay(10**6, 0.5, 5.0, chance=0.0) == 5.0, "a huge attempt count neither overflows nor passes the cap"


def test_backoff_is_jittered_within_bounds():
    delays = [backoff_delay(attempt, 0.5, 5.0) for attempt in range(12) for _ in range(50)]
    assert all(0.5 * (1 - JITTER) <= delay <= 5.0 for delay in delays)
    at_cap = [backoff_delay(20, 0.5, 5.0) for _ in range(200)]
    assert min(at_cap) >= 5.0 * (1 - JITTER) and max(at_cap) - min(at_cap) > 1.0, "clients at the cap spread out"
    first = {backoff_delay(0, 0.5, 5.0) for _ in range(50)}
    assert len(first) > 40, "the first retry is jittered too (a whole fleet retries at once then)"
    assert backoff_delay(3, 0.5, 5.0, chance=0.999) == pytest.approx(4.0 * (1 - JITTER * 0.999))


def test_backoff_refuses_bad_bounds():
    with pytest.raises(ValueError, match="min_delay"):
        backoff_delay(0, 0.0, 5.0)
    with pytest.raises(ValueError, match="min_delay"):
        backoff_delay(0, 6.0, 5.0)


def test_clients_wait_at_most_5_s_by_default():
    assert MqttSettings().reconnect_max_delay_s == 5.0


# -- paho's log during reconnects and stops ------------------------------------------


def test_reconnects_and_stops_log_no_errors(broker, mqtt_client, caplog):
    caplog.set_level(logging.DEBUG, logger="paho")
    caplog.set_level(logging.INFO, logger="comms")
    client = mqtt_client("cam-a", reconnect_min_delay_s=0.1, reconnect_max_delay_s=0.3)
    broker.kill()
    assert wait_until(lambda: not client.connected)
    assert wait_until(lambda: "cannot connect" in (client.last_error or ""), WAIT_S), "it retried while the broker was down"
    broker.start()
    assert client.wait_connected(WAIT_S) and client.connect_count == 2
    broker.kill()
    assert wait_until(lambda: not client.connected)
    client.stop(announce_stopped=False, timeout=1)  # a stop while the broker is away
    broker.start()

    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, [f"{record.name}: {record.getMessage()}" for record in errors]
    demoted = [record for record in caplog.records if record.name == "paho" and "not connected" in record.getMessage()]
    assert demoted and all(record.levelno in (logging.INFO, logging.WARNING) for record in demoted), "paho's noise seen, demoted"
    retries = [record.getMessage() for record in caplog.records if "retrying in" in record.getMessage()]
    assert retries and all(float(message.rsplit("retrying in ", 1)[1].split()[0]) <= 0.3 for message in retries)


# -- the broker's log -------------------------------------------------------------------


def test_a_killed_broker_keeps_its_last_log_lines(broker, mqtt_client):
    client = mqtt_client("cam-b")
    assert client.connected
    broker.kill()  # SIGKILL: no chance to flush anything
    last_line = broker.read_log().strip().splitlines()[-1]
    assert "New client connected" in last_line and "as cam-b" in last_line, last_line
    assert f"log_dest file {broker.settings.state_dir.resolve() / 'mosquitto.log'}" in render_conf(broker.settings)


def test_broker_log_destination_is_checked():
    assert BrokerSettings(log_dest="stdout").log_file is None
    assert BrokerSettings(log_dest="file /tmp/broker.log").log_file == Path("/tmp/broker.log")
    with pytest.raises(ValueError, match="log_dest"):
        BrokerSettings(log_dest="syslog please")


# -- edge: decode timing, totals, exit codes ----------------------------------------------


def test_decode_time_excludes_the_pacing_wait(tmp_path):
    source = ImageFolderSource(folder_of_faces(tmp_path / "faces"), loop=True, fps=20)
    started = time.monotonic()
    decode_times = []
    for _ in range(6):
        next(source)
        decode_times.append(source.decode_seconds)
    assert time.monotonic() - started >= 5 * 0.05 * 0.9, "paced at 20 fps"
    assert max(decode_times) < 0.025, decode_times


def reports_after(messages, frames: int) -> list:
    """The stats reports sent once the agent had processed ``frames`` frames."""
    reports = [parse_stats(message.payload) for message in messages]
    return [report for report in reports if report.frames_processed >= frames]


def test_a_paced_agent_reports_decode_without_the_wait_and_logs_totals_on_stop(broker, pki_dir, tmp_path, mqtt_client, topics, spawned):
    stats = subscribe_and_wait(mqtt_client("monitor"), topics.stats("cam-a"))
    env = agent_env(pki_dir, broker.settings.tls_port, tmp_path / "edge", SOURCE__IMAGE_FPS="5")
    process = start_agent(env, tmp_path / "agent.log", "--source", str(folder_of_faces(tmp_path / "faces")), "--loop")
    spawned.append(process)
    assert stats.wait_for(lambda messages: reports_after(messages, 5), WAIT_S * 3), (tmp_path / "agent.log").read_text()
    report = reports_after(stats.messages, 5)[-1]
    # At 5 frames/s the pacing wait is ~200 ms a frame; reading a small JPEG takes a few.
    assert report.stage_ms.decode < 50, report.stage_ms
    process.send_signal(signal.SIGTERM)
    assert process.wait(WAIT_S * 2) == 0
    log_text = (tmp_path / "agent.log").read_text()
    totals = json.loads(log_text.split("edge totals: ", 1)[1].splitlines()[0])
    assert totals["frames_processed"] >= 5 and totals["frames_dropped"] == 0
    assert totals["results_published"] >= 5 and totals["outbox_depth"] == 0
    assert totals["duration_s"] > 1.0


def test_a_folder_without_a_decodable_image_is_refused(tmp_path):
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"not an image")
    with pytest.raises(SourceError, match="none of its 2 image"):
        ImageFolderSource(tmp_path)


def test_an_input_without_a_readable_frame_exits_4(pki_dir, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "frame.jpg").write_bytes(b"\xff\xd8 truncated")
    env = agent_env(pki_dir, 1, tmp_path / "edge")
    completed = subprocess.run([console_script("emq-edge"), "--source", str(folder)], env=env, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 4, completed.stderr
    assert "cannot open source" in completed.stderr and "none of its 1 image(s) can be decoded" in completed.stderr
    assert "Traceback" not in completed.stderr
