"""The edge's parts in-process, through the transport protocol (no broker): the frame loop's pacing,
pause and resume, set_fps, snapshot, stats, the progress watchdog, and the whole assembly on a video."""

from __future__ import annotations

import json
import socket
import threading
from datetime import datetime, timezone
from itertools import count

import numpy as np
import pytest

from comms.deliveries import completed
from comms.transport import Message, Transport
from contract.messages import JSON_CONTENT_TYPE, Command
from contract.topics import Topics
from contract.validation import parse_reply, parse_result, parse_stats
from edge.commands import CommandHandlers, CommandInbox, CommandResponder
from edge.config import EdgeConfig, PublishSettings
from edge.loop import FrameLoop, LoopControl, Progress
from edge.publisher import ResultPublisher
from edge.sources import FrameSource
from edge.watchdog import ProgressWatchdog, judge, sd_notify
from tests.conftest import media_file

FRAME = np.zeros((48, 64, 3), np.uint8)


class FakeTransport:
    """A Transport that keeps what is published and lets a test deliver messages; always 'connected'."""

    def __init__(self, connected: bool = True) -> None:
        self.published: list[dict] = []
        self.handlers: dict[str, object] = {}
        self.last_error, self.connect_count, self._connected = None, 1, connected
        self._mids = count(1)

    def start(self):
        return self

    def stop(self, *, announce_stopped: bool = True, timeout: float = 5.0, end_session: bool = False) -> None:
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    def wait_connected(self, timeout: float) -> bool:
        return self._connected

    def publish(self, topic, payload, *, qos=0, retain=False, user_properties=None, content_type=None, expiry_s=None,
                response_topic=None):
        self.published.append({"topic": topic, "payload": payload if isinstance(payload, bytes) else payload.encode(),
                               "qos": qos, "retain": retain, "user_properties": user_properties, "content_type": content_type})
        return completed(next(self._mids), qos, None)  # the broker "acknowledged" at once

    def subscribe(self, topic_filter, handler, qos=1):
        self.handlers[topic_filter] = handler
        return completed(next(self._mids), qos, None)

    def route(self, topic_filter, handler) -> None:
        self.handlers[topic_filter] = handler

    def unsubscribe(self, topic_filter):
        self.handlers.pop(topic_filter, None)

    def ack(self, message) -> None: ...

    def ack_all(self, messages) -> None: ...

    def on(self, topic: str) -> list[dict]:
        return [message for message in self.published if message["topic"] == topic]


class ListSource(FrameSource):
    """``frames`` blank frames, as a file (waits for the loop) or a live camera (drops what the loop skips)."""

    def __init__(self, frames: int, live: bool = False) -> None:
        super().__init__()
        self.description, self.live, self._left = f"test:{frames}", live, frames

    def _read_frame(self):
        if self._left <= 0:
            return None
        self._left -= 1
        return FRAME


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingStop(threading.Event):
    """A stop event whose waits pass fake time at once and are recorded (pacing without sleeping)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        super().__init__()
        self.clock = clock or FakeClock()
        self.waits: list[float] = []

    def wait(self, timeout=None) -> bool:
        self.waits.append(timeout)
        self.clock.now += timeout or 0.0
        return self.is_set()


def a_loop(source: FrameSource, control: LoopControl | None = None, stop=None, **hooks) -> tuple[FrameLoop, list]:
    handled: list = []
    stop = stop or RecordingStop()
    loop = FrameLoop(source, lambda: source, lambda number, *_: handled.append(number), control or LoopControl(),
                     stop, clock=stop.clock, **hooks)
    return loop, handled


def test_the_transport_stand_in_satisfies_the_protocol() -> None:
    assert isinstance(FakeTransport(), Transport)


def test_a_file_is_throttled_to_max_fps_and_loses_no_frame() -> None:
    stop = RecordingStop()
    loop, handled = a_loop(ListSource(5), LoopControl(max_fps=20.0), stop)
    loop.run()
    assert handled == [0, 1, 2, 3, 4] and loop.counters.dropped == 0
    waits = [wait for wait in stop.waits if wait]
    assert waits == pytest.approx([0.05] * 4)  # one slot of 1/20 s before each later frame


def test_a_live_source_faster_than_max_fps_drops_frames_instead_of_waiting() -> None:
    stop = RecordingStop()
    loop, handled = a_loop(ListSource(50, live=True), LoopControl(max_fps=1.0), stop)
    reopened = []
    loop._reopen = lambda: reopened.append(1) or ListSource(0, live=True)
    stop_after_first_reopen = loop._reopen_live_source

    def reopen_once():
        stop.set()
        return stop_after_first_reopen()

    loop._reopen_live_source = reopen_once
    loop.run()
    assert handled == [0]  # 50 frames within well under a second, at most 1 frame/s
    assert loop.counters.dropped == 49
    assert not [wait for wait in stop.waits if wait and wait < 0.9]  # no pacing waits: dropping is the throttle


_command_ids = count(1)


def command_message(topics: Topics, name: str, **args) -> Message:
    payload = Command(id=f"c{next(_command_ids)}", command=name, args=args).to_json()
    return Message(topics.command("cam-a"), payload if isinstance(payload, bytes) else payload.encode(), 1, False, 1)


class Slot:
    name, version, current = "mini_xception_fer2013", "1.0.0", None


class StubOutbox:
    epoch, dropped = "e" * 16, 0

    def __init__(self) -> None:
        self.rows: list = []

    def next_seq(self) -> int:
        return len(self.rows)

    def append(self, seq, topic, payload) -> None:
        self.rows.append((seq, topic, payload))

    def depth(self) -> int:
        return len(self.rows)


def a_responder(control: LoopControl, transport: FakeTransport, topics: Topics) -> tuple[CommandInbox, CommandResponder]:
    inbox = CommandInbox(["pause", "resume", "set_fps", "snapshot", "rollback_model", "ping"])
    handlers = CommandHandlers(control, Slot(), updates=None, outbox=StubOutbox())
    return inbox, CommandResponder(inbox, handlers, transport, topics.command_reply("cam-a"), "cam-a")


def test_pause_and_resume_commands_hold_a_file_and_lose_nothing() -> None:
    topics, transport, control = Topics(), FakeTransport(), LoopControl()
    inbox, responder = a_responder(control, transport, topics)
    inbox.on_message(command_message(topics, "pause"))
    calls = count()

    def between_frames():
        responder.handle_pending()
        if next(calls) == 5:  # paused for a while, then resumed
            inbox.on_message(command_message(topics, "resume"))

    loop, handled = a_loop(ListSource(3), control, RecordingStop(), between_frames=between_frames)
    loop.run()
    assert handled == [0, 1, 2] and loop.counters.dropped == 0  # a paused file waits; nothing is skipped
    replies = [parse_reply(message["payload"]) for message in transport.on(topics.command_reply("cam-a"))]
    assert [(reply.ok, reply.result) for reply in replies] == [(True, {"paused": True}), (True, {"paused": False})]
    assert all(message["qos"] == 1 and message["content_type"] == JSON_CONTENT_TYPE for message in transport.published)


def test_a_paused_live_source_drops_frames_and_the_watchdog_stays_calm() -> None:
    control = LoopControl(paused=True)
    loop, handled = a_loop(ListSource(10, live=True), control, RecordingStop())
    loop._reopen_live_source = lambda: False
    loop.run()
    assert handled == [] and loop.counters.dropped == 10
    assert loop.progress.waiting_for_source  # paused: no frame is due, so no stall is reported
    assert judge(loop.progress, stall_s=1.0, now=loop.progress.started_at + 100).healthy
    loop.control.paused = False
    loop.progress.waiting_for_source = False
    assert not judge(loop.progress, stall_s=1.0, now=loop.progress.started_at + 100).healthy


def test_set_fps_applies_from_the_next_frame_and_is_answered() -> None:
    topics, transport, control = Topics(), FakeTransport(), LoopControl(max_fps=0.5)
    inbox, responder = a_responder(control, transport, topics)
    inbox.on_message(command_message(topics, "set_fps", fps=20))
    stop = RecordingStop()
    loop, handled = a_loop(ListSource(3), control, stop, between_frames=responder.handle_pending)
    loop.run()
    assert control.max_fps == 20.0 and handled == [0, 1, 2]
    assert all(wait <= 0.05 for wait in stop.waits if wait)  # never a 2 s slot of the old rate
    reply = parse_reply(transport.on(topics.command_reply("cam-a"))[0]["payload"])
    assert reply.ok and reply.result == {"fps": 20.0}


def analysis_with_picture():
    from edge.perception.pipeline import FrameAnalysis

    return FrameAnalysis(faces=[], annotated=np.full((48, 64, 3), 128, np.uint8), timings_ms={})


def test_snapshot_publishes_the_next_frame_even_when_frames_are_off() -> None:
    topics, transport, control = Topics(), FakeTransport(), LoopControl()
    publisher = ResultPublisher("cam-a", topics, StubOutbox(), transport, Slot(), PublishSettings(frame_fps=0), control)
    now = datetime.now(timezone.utc)
    assert publisher.publish_frame(0, now, analysis_with_picture(), None) == (0.0, 0.0)  # off: nothing sent
    inbox, responder = a_responder(control, transport, topics)
    inbox.on_message(command_message(topics, "snapshot"))
    responder.handle_pending()
    publisher.publish_frame(1, now, analysis_with_picture(), None)
    publisher.publish_frame(2, now, analysis_with_picture(), None)
    frames = transport.on(topics.frame("cam-a"))
    assert len(frames) == 1 and frames[0]["qos"] == 0  # one snapshot, then off again
    assert dict(frames[0]["user_properties"])["frame_number"] == "1"


def test_a_result_goes_to_the_outbox_with_the_source_name_and_a_heartbeat_without_faces() -> None:
    topics, transport, control, outbox = Topics(), FakeTransport(), LoopControl(), StubOutbox()
    publisher = ResultPublisher("cam-a", topics, outbox, transport, Slot(), PublishSettings(heartbeat_s=5), control)
    reference = publisher.store_result(7, datetime.now(timezone.utc), FRAME, analysis_with_picture(), "file:clip.mp4", "clip.mp4")
    assert reference is not None and reference.seq == 0  # the first result is always sent, faces or not
    result = parse_result(outbox.rows[0][2])
    assert (result.frame_number, result.source, result.video_file, result.faces) == (7, "file:clip.mp4", "clip.mp4", [])
    assert publisher.store_result(8, datetime.now(timezone.utc), FRAME, analysis_with_picture(), "file:clip.mp4", "clip.mp4") is None


def test_the_watchdog_judges_stalls_and_tells_systemd_and_the_health_file(tmp_path, monkeypatch) -> None:
    progress = Progress(started_at=0.0)
    assert judge(progress, stall_s=30, now=10.0).healthy  # start-up grace
    assert not judge(progress, stall_s=30, now=31.0).healthy  # nothing ever processed
    progress.last_frame_at = 40.0
    assert judge(progress, stall_s=30, now=60.0).healthy
    stalled = judge(progress, stall_s=30, now=80.0)
    assert not stalled.healthy and "40 s" in stalled.reason and stalled.last_frame_age_s == 40.0

    notify = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify))
    receiver.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
    assert sd_notify("STATUS=hello") and receiver.recv(100) == b"STATUS=hello"

    live = Progress()
    watchdog = ProgressWatchdog(live, stall_s=30, interval_s=0.05, health_file=tmp_path / "edge" / "health.json")
    watchdog.start()
    messages = [receiver.recv(100) for _ in range(3)]
    assert messages[0] == b"WATCHDOG=1" and b"READY=1" in messages  # healthy at start: the ping, then ready
    assert json.loads((tmp_path / "edge" / "health.json").read_text())["healthy"] is True
    live.started_at -= 100  # no frame in 100 s
    assert_eventually(lambda: json.loads((tmp_path / "edge" / "health.json").read_text())["healthy"] is False)
    watchdog.stop()
    assert not (tmp_path / "edge" / "health.json").exists()
    receiver.close()


def assert_eventually(predicate) -> None:
    from tests.conftest import wait_until

    assert wait_until(predicate, 5.0)


@pytest.mark.slow
def test_the_assembled_edge_runs_a_video_through_a_stand_in_transport(tmp_path, pki_dir) -> None:
    from edge.assembly import build_edge

    config = EdgeConfig(device_id="cam-a", pki_dir=pki_dir, data_dir=tmp_path, source={"spec": str(media_file("test.mp4"))},
                        outbox={"keep_until": "acknowledged", "flush_timeout_s": 5},
                        publish={"stats_interval_s": 0.2, "frame_fps": 240}, homeassistant={"enabled": False})
    transport = FakeTransport()
    edge = build_edge(config, transport_factory=lambda *_: transport)
    edge.run()
    topics = Topics()
    assert edge.loop.counters.processed == 115  # every frame of the clip
    results = [parse_result(message["payload"]) for message in transport.on(topics.result("cam-a"))]
    assert results and [result.seq for result in results] == list(range(len(results)))
    assert {result.video_file for result in results} == {"test.mp4"}
    assert transport.on(topics.frame("cam-a")), "annotated frames published"
    stats = [parse_stats(message["payload"]) for message in transport.on(topics.stats("cam-a"))]
    assert stats and stats[-1].healthy and stats[-1].frames_processed > 0
    assert set(transport.handlers) >= {topics.command("cam-a"), topics.stored("cam-a")}
