"""The edge agent end to end: real video, real model, real broker, the real `emq-edge` process."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from contract.topics import Channel
from contract.validation import FrameMeta, parse_frame, parse_reply, parse_result, parse_stats
from tests.conftest import WAIT_S, console_script, media_file, subscribe_and_wait, wait_until
from tests.edge_helpers import (
    agent_env, agent_log, assert_complete_once, outbox_depth, produced_count, run_agent, start_agent, unique_results,
)

AGENT_TIMEOUT_S = 120
OUTAGE_S = 10.0


@pytest.fixture
def persistent_ingest(mqtt_client, topics):
    """A subscriber that never misses a QoS 1 result, even across broker restarts."""
    client = mqtt_client("ingest", client_id="test-ingest", clean_start=False, session_expiry_s=600)
    return subscribe_and_wait(client, topics.all_devices(Channel.RESULT))


def test_every_processed_frame_yields_a_valid_result_in_order(broker, pki_dir, tmp_path, mqtt_client, topics, spawned):
    video = media_file("woman2.mp4")
    monitor = mqtt_client("monitor")
    results = subscribe_and_wait(monitor, topics.result("cam-a"))
    frames = subscribe_and_wait(monitor, topics.frame("cam-a"))
    stats = subscribe_and_wait(monitor, topics.stats("cam-a"))
    env = agent_env(pki_dir, broker.settings.tls_port, tmp_path / "edge", PUBLISH__HEARTBEAT_S="0.000001", PUBLISH__FRAME_FPS="30")
    process = run_agent(spawned, env, tmp_path, "--source", str(video))
    assert process.wait(AGENT_TIMEOUT_S) == 0, agent_log(tmp_path)

    total_frames = int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT))
    assert results.wait_for(lambda messages: len(messages) >= total_frames), f"{len(results.messages)} results"
    parsed = unique_results(results.messages)
    assert all(result.device_id == "cam-a" for result in parsed)
    assert_complete_once(results.messages, total_frames)
    assert [result.frame_number for result in parsed] == list(range(total_frames))
    with_faces = [result for result in parsed if result.faces]
    assert len(with_faces) >= 0.95 * total_frames
    assert len({face.track_id for result in with_faces for face in result.faces}) <= 3
    assert all(face.crop_png_b64 for result in with_faces for face in result.faces)
    assert all(result.model.version for result in parsed)

    assert frames.messages, "no frames published"
    by_number = {result.frame_number: result for result in parsed}
    checked = 0
    for message in frames.messages[:10]:
        meta = FrameMeta.from_properties(list(message.user_properties))
        result = by_number[meta.frame_number]
        if not result.faces:
            continue
        assert meta.result_msg_id == result.msg_id and meta.result_seq == result.seq
        annotated = iio.imread(parse_frame(message.payload), extension=".jpg")  # decoded as the cloud does
        assert_faces_drawn(video, meta.frame_number, annotated, result)
        checked += 1
    assert checked, "no frame with a face among the first frames"
    assert stats.wait_for(lambda messages: messages)
    assert parse_stats(stats.messages[-1].payload, expected_device="cam-a").frames_processed > 0


def assert_faces_drawn(video, frame_number: int, annotated_rgb: np.ndarray, result) -> None:
    """The published frame differs from the raw frame along the face boxes (the drawing), not elsewhere."""
    capture = cv2.VideoCapture(str(video))
    capture.set(cv2.CAP_PROP_POS_FRAMES, frame_number)
    ok, raw_bgr = capture.read()
    assert ok
    raw = cv2.cvtColor(raw_bgr, cv2.COLOR_BGR2RGB).astype(np.int16)
    assert annotated_rgb.shape == raw.shape
    difference = np.abs(annotated_rgb.astype(np.int16) - raw).sum(axis=2)
    box = result.faces[0].box
    edge = difference[box.y + box.h - 2:box.y + box.h + 1, box.x:box.x + box.w]
    assert edge.mean() > 60, "no box drawn along the face"
    assert np.median(difference) < 20, "the frame differs everywhere: not the same frame"


def test_image_without_faces_gives_an_empty_result_and_exits_cleanly(broker, pki_dir, tmp_path, mqtt_client, topics, spawned):
    results = subscribe_and_wait(mqtt_client("monitor"), topics.result("cam-a"))
    env = agent_env(pki_dir, broker.settings.tls_port, tmp_path / "edge", PUBLISH__HEARTBEAT_S="0.000001")
    process = run_agent(spawned, env, tmp_path, "--source", str(media_file("no-faces.jpg")))
    assert process.wait(AGENT_TIMEOUT_S) == 0, agent_log(tmp_path)
    assert results.wait_for(lambda messages: len(messages) == 1)
    heartbeat = parse_result(results.messages[0].payload)
    assert heartbeat.faces == [] and heartbeat.emotion_text is None


def test_broker_outage_loses_nothing(broker, pki_dir, tmp_path, persistent_ingest, spawned):
    data_dir = tmp_path / "edge"
    env = agent_env(pki_dir, broker.settings.tls_port, data_dir, SOURCE__PACE="true")
    process = run_agent(spawned, env, tmp_path, "--source", str(media_file("woman2.mp4")))
    assert persistent_ingest.wait_for(lambda messages: len(messages) >= 30), agent_log(tmp_path)

    broker.stop()
    outage_started = time.monotonic()
    assert wait_until(lambda: outbox_depth(data_dir) >= 30, OUTAGE_S), "agent stopped producing while offline"
    assert process.poll() is None
    # The outage itself is the scenario (10 s), not a synchronisation.
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
    queued_during_outage = outbox_depth(data_dir)
    broker.start()

    assert process.wait(AGENT_TIMEOUT_S) == 0, agent_log(tmp_path)
    assert outbox_depth(data_dir) == 0
    produced = produced_count(data_dir)
    assert persistent_ingest.wait_for(lambda messages: len(unique_results(messages)) >= produced)
    assert queued_during_outage >= 200
    assert produced >= 440
    assert_complete_once(persistent_ingest.messages, produced)


def test_sigkill_while_offline_then_restart_replays_the_outbox(broker, pki_dir, tmp_path, persistent_ingest, spawned):
    data_dir = tmp_path / "edge"
    video = str(media_file("woman2.mp4"))
    env = agent_env(pki_dir, broker.settings.tls_port, data_dir, SOURCE__PACE="true")
    first = run_agent(spawned, env, tmp_path, "--source", video)
    assert persistent_ingest.wait_for(lambda messages: len(messages) >= 20), agent_log(tmp_path)

    broker.stop()
    assert wait_until(lambda: outbox_depth(data_dir) >= 50, WAIT_S * 2)
    first.send_signal(signal.SIGKILL)
    first.wait(WAIT_S)
    stranded = outbox_depth(data_dir)
    broker.start()

    second = run_agent(spawned, agent_env(pki_dir, broker.settings.tls_port, data_dir), tmp_path, "--source", str(media_file("justin.jpg")))
    assert second.wait(AGENT_TIMEOUT_S) == 0, agent_log(tmp_path)
    assert outbox_depth(data_dir) == 0
    produced = produced_count(data_dir)
    assert persistent_ingest.wait_for(lambda messages: len(unique_results(messages)) >= produced)
    assert stranded >= 50
    # The replayed rows, then the new run's result with its numbering continued.
    assert_complete_once(persistent_ingest.messages, produced)


def test_commands_malformed_unauthorised_and_valid(broker, pki_dir, tmp_path, mqtt_client, topics, spawned):
    env = agent_env(pki_dir, broker.settings.tls_port, tmp_path / "edge", COMMANDS__ALLOWED='["ping", "pause", "resume", "set_fps", "snapshot"]')
    process = run_agent(spawned, env, tmp_path, "--source", str(media_file("woman2.mp4")), "--loop", "--pace")
    webui = mqtt_client("webui")
    replies = subscribe_and_wait(webui, topics.command_reply("cam-a"))
    status = subscribe_and_wait(mqtt_client("monitor"), topics.status("cam-a"))
    assert status.wait_for(lambda messages: b"online" in [m.payload for m in messages]), agent_log(tmp_path)

    def send(payload: bytes, count: int):
        assert webui.publish(topics.command("cam-a"), payload, qos=1).wait(WAIT_S)
        assert replies.wait_for(lambda messages: len(messages) >= count), agent_log(tmp_path)
        return parse_reply(replies.messages[count - 1].payload)

    malformed = send(b'{"schema": "emotion.command/1", "id": "c1", "command": "pause", "args": ', 1)
    assert not malformed.ok and "invalid command" in malformed.error
    unknown = send(b'{"schema": "emotion.command/1", "id": "c2", "command": "format_disk"}', 2)
    assert not unknown.ok and unknown.id == "c2" and "command" in unknown.error
    disallowed = send(b'{"schema": "emotion.command/1", "id": "c3", "command": "rollback_model"}', 3)
    assert not disallowed.ok and "not allowed" in disallowed.error

    intruder = mqtt_client("cam-b").publish(topics.command("cam-a"), b'{"schema": "emotion.command/1", "id": "evil", "command": "pause"}', qos=1)
    assert intruder.wait(WAIT_S) and intruder.reason is not None  # the broker refused it

    paused = send(b'{"schema": "emotion.command/1", "id": "c4", "command": "pause"}', 4)
    assert paused.ok and paused.result == {"paused": True}
    ping = send(b'{"schema": "emotion.command/1", "id": "c5", "command": "ping"}', 5)
    assert ping.ok and ping.result["paused"] is True and ping.result["model_version"]
    fps = send(b'{"schema": "emotion.command/1", "id": "c6", "command": "set_fps", "args": {"fps": 2}}', 6)
    assert fps.ok and fps.result == {"fps": 2.0}
    assert [parse_reply(m.payload).id for m in replies.messages] == ["", "c2", "c3", "c4", "c5", "c6"]  # never "evil"
    assert process.poll() is None, "agent died"

    process.send_signal(signal.SIGTERM)
    assert process.wait(WAIT_S * 2) == 0
    assert status.wait_for(lambda messages: messages[-1].payload == b"stopped")


@pytest.mark.parametrize(
    ("arguments", "environment", "code", "message"),
    [
        (["--source", "99"], {}, 4, "cannot open source"),
        (["--source", "/nonexistent/video.mp4"], {}, 4, "does not exist"),
        ([], {"EMQ_EDGE__PUBLISH__JPEG_QUALITY": "500"}, 2, "publish.jpeg_quality"),
        ([], {"EMQ_EDGE__UNKNOWN_KEY": "1"}, 2, "unknown_key"),
        ([], {"EMQ_MODEL_STORE": "/nonexistent-store"}, 3, "emq-model import-pretrained"),
    ],
)
def test_startup_errors_are_clear_and_non_zero(pki_dir, tmp_path, arguments, environment, code, message):
    env = agent_env(pki_dir, 1, tmp_path / "edge")
    env.update(environment)
    completed = subprocess.run([console_script("emq-edge"), *arguments], env=env, capture_output=True, text=True, timeout=60)
    assert completed.returncode == code, completed.stderr
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.fixture
def mjpeg_stream():
    """A real HTTP MJPEG camera stream that hangs up after 20 frames on every connection."""
    import http.server
    import socketserver
    import threading

    jpeg = cv2.imencode(".jpg", cv2.imread(str(media_file("justin.jpg"))))[1].tobytes()
    connections: list[int] = []

    class Camera(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            connections.append(1)
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for _ in range(20):
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg))

        def log_message(self, *arguments):
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Camera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg", connections
    server.shutdown()


def test_a_live_stream_that_drops_is_reopened(broker, pki_dir, tmp_path, mqtt_client, topics, spawned, mjpeg_stream):
    url, connections = mjpeg_stream
    results = subscribe_and_wait(mqtt_client("monitor"), topics.result("cam-a"))
    process = run_agent(spawned, agent_env(pki_dir, broker.settings.tls_port, tmp_path / "edge"), tmp_path, "--source", url)
    assert results.wait_for(lambda messages: len(messages) >= 45, WAIT_S * 3), agent_log(tmp_path)
    assert len(connections) >= 3 and process.poll() is None  # the stream ended twice; the agent came back each time
    assert "reopening" in agent_log(tmp_path)
    process.send_signal(signal.SIGTERM)
    assert process.wait(WAIT_S * 2) == 0
    assert_complete_once(results.messages)


def test_the_agent_announces_itself_to_home_assistant(broker, pki_dir, tmp_path, mqtt_client, spawned):
    configs = subscribe_and_wait(mqtt_client("monitor"), "homeassistant/+/cam-a/+/config")
    env = agent_env(pki_dir, broker.settings.tls_port, tmp_path / "edge")
    process = run_agent(spawned, env, tmp_path, "--source", str(media_file("justin.jpg")))
    assert process.wait(AGENT_TIMEOUT_S) == 0, agent_log(tmp_path)
    assert configs.wait_for(lambda messages: len(messages) == 3), agent_log(tmp_path)
    components = sorted(message.topic.split("/")[1] for message in configs.messages)
    assert components == ["binary_sensor", "camera", "sensor"]
    camera = json.loads(next(m.payload for m in configs.messages if "/camera/" in m.topic))
    assert camera["topic"] == "emotion/devices/cam-a/frame" and camera["image_encoding"] == "b64"
