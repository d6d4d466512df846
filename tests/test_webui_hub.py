"""The live hub on its own: validation, bounded memory, device cap, and fan-out that never blocks."""

from __future__ import annotations

import base64
import json
import time

import pytest

from comms.mqtt import Message
from contract.messages import Reply
from contract.topics import Topics
from tests.webui_helpers import face_with, result_with, stats_for, synthetic_jpeg
from webui.commands import CommandLog, CommandRecord
from webui.live import LiveHub, StreamLimitReached

TOPICS = Topics()
JPEG_B64 = base64.b64encode(synthetic_jpeg("hub", size=(160, 90))).decode()


def message(topic: str, payload: bytes | str, *, retain: bool = False, properties=()) -> Message:
    data = payload.encode() if isinstance(payload, str) else payload
    return Message(topic=topic, payload=data, qos=0, retain=retain, mid=0, user_properties=tuple(properties))


def frame(device: str, payload: str = JPEG_B64) -> Message:
    return message(TOPICS.frame(device), payload, properties=[("frame_number", "1"), ("captured_at", "2026-11-22T03:47:13.123Z")])


def events_of(mailbox) -> list[tuple[str, dict]]:
    """Decode what a stream would send: (event name, data)."""
    decoded = []
    for chunk in mailbox.take(timeout=0):
        for block in chunk.decode().strip().split("\n\n"):
            name, data = block.split("\n", 1)
            decoded.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return decoded


def hub(**options) -> LiveHub:
    options.setdefault("max_devices", 16)
    options.setdefault("max_streams", 8)
    return LiveHub(TOPICS, **options)


def test_invalid_messages_are_counted_and_ignored_never_raised():
    live = hub()
    result = result_with("cam-a", 0, [face_with("happy", 0.8)])
    bad = [
        frame("cam-a", "not base64 at all!"),
        frame("cam-a", base64.b64encode(b"GIF89a not a jpeg").decode()),
        message(TOPICS.result("cam-a"), b"{not json"),
        message(TOPICS.result("cam-b"), result.to_json()),  # body says cam-a
        message(TOPICS.status("cam-a"), "sleeping"),
        message(TOPICS.stats("cam-a"), b'{"fps": "fast"}'),
        message(TOPICS.command_reply("cam-a"), b"[]"),
        message("emotion/devices/bad.id/frame", JPEG_B64),
        message(TOPICS.result("cam-a"), b"x" * (2 * 1024 * 1024)),
    ]
    for item in bad:
        live.handle(item)
    assert sum(live.invalid.values()) == len(bad)
    assert live.invalid["frame"] == 2 and live.invalid["topic"] == 1
    assert live.devices() == []
    assert live.last_invalid


def test_a_valid_message_of_each_kind_updates_the_device():
    live = hub()
    stream = live.open_stream()
    result = result_with("cam-a", 7, [face_with("sad", 0.4, box=(0, 0, 50, 50)), face_with("happy", 0.9, track_id=2)])
    live.handle(message(TOPICS.status("cam-a"), "online"))
    live.handle(message(TOPICS.stats("cam-a"), stats_for("cam-a", fps=9.5).to_json()))
    live.handle(message(TOPICS.result("cam-a"), result.to_json()))
    properties = [("frame_number", "7"), ("captured_at", result.captured_at), ("result_seq", "7"), ("result_msg_id", result.msg_id)]
    live.handle(message(TOPICS.frame("cam-a"), JPEG_B64, properties=properties))
    [device] = live.devices()
    assert device["status"] == "online" and device["stats"]["fps"] == 9.5
    assert [face["label"] for face in device["result"]["faces"]] == ["happy", "sad"], "largest face first"
    assert "crop_png_b64" not in json.dumps(device["result"])
    events = dict(events_of(stream))
    assert events["frame"]["jpeg"] == JPEG_B64, "the frame travels as published"
    assert events["frame"]["frame_number"] == 7
    assert events["frame"]["result"]["msg_id"] == result.msg_id, "the frame carries its own result for in-sync bars"
    assert len(events["result"]["faces"][0]["probabilities"]) == 7


def test_only_the_latest_frame_result_status_and_stats_are_kept():
    live = hub()
    for number in range(300):
        live.handle(frame("cam-a"))
        live.handle(message(TOPICS.result("cam-a"), result_with("cam-a", number, [face_with("fear", 0.5)]).to_json()))
    state = live._devices["cam-a"]
    assert set(state.events) == {"frame", "result"}
    assert state.result["seq"] == 299
    assert live.received["frame"] == 300


def test_beyond_the_device_cap_the_least_recently_seen_device_is_dropped():
    clock = iter(range(1000))
    live = hub(max_devices=3, clock=lambda: float(next(clock)))
    stream = live.open_stream()
    for device in ("cam-1", "cam-2", "cam-3", "cam-1", "cam-4"):
        live.handle(frame(device))
    assert live.device_ids() == ["cam-1", "cam-3", "cam-4"]
    assert live.evicted == 1
    assert ("removed", {"device": "cam-2"}) in events_of(stream)


def test_a_retained_status_does_not_count_as_seen():
    live = hub()
    live.handle(message(TOPICS.status("cam-old"), "offline", retain=True))
    [device] = live.devices()
    assert device["status"] == "offline" and device["last_seen"] is None


def test_streams_that_never_read_cannot_block_the_network_thread():
    live = hub(max_devices=10)
    stuck = [live.open_stream() for _ in range(5)]
    started = time.perf_counter()
    for number in range(2000):
        live.handle(frame(f"cam-{number % 10}"))
    per_message_ms = (time.perf_counter() - started) * 1000 / 2000
    assert per_message_ms < 1.0, f"{per_message_ms:.3f} ms per message with stuck streams"
    for mailbox in stuck:
        assert len(mailbox._pending) == 10 + 1, "one pending frame per device (and the broker state), no backlog"
        assert mailbox.superseded == 2000 - 10


def test_the_number_of_streams_is_capped():
    live = hub(max_streams=2)
    first, _ = live.open_stream(), live.open_stream()
    with pytest.raises(StreamLimitReached):
        live.open_stream()
    live.close_stream(first)
    live.open_stream()
    live.close()
    assert live.stream_count == 0


def test_replies_are_matched_to_our_commands_only():
    commands = CommandLog(keep=10)
    live = hub(commands=commands)
    stream = live.open_stream()
    commands.add(CommandRecord("ui-1", "cam-a", "ping", {}, "admin", time.time()))
    live.handle(message(TOPICS.command_reply("cam-a"), Reply(id="ui-1", device_id="cam-a", ok=True, result={"pong": True}).to_json()))
    live.handle(message(TOPICS.command_reply("cam-a"), Reply(id="other-ui", device_id="cam-a", ok=True).to_json()))
    live.handle(message(TOPICS.command_reply("cam-b"), Reply(id="ui-1", device_id="cam-a", ok=True).to_json()))
    assert commands.get("ui-1").reply == {"ok": True, "error": None, "result": {"pong": True}}
    replies = [data for name, data in events_of(stream) if name == "reply"]
    assert [reply["id"] for reply in replies] == ["ui-1"]
    assert live.invalid["cmd/reply"] == 1, "a reply whose body names another device"


def test_a_channel_the_hub_does_not_know_is_ignored_quietly():
    """E.g. the ingest's retained ``devices/<id>/stored``, should a wider subscription ever deliver it."""
    live = hub()
    mailbox = live.open_stream()
    events_of(mailbox)  # the snapshot (broker state)
    for topic in ("emotion/devices/cam-a/stored", "emotion/devices/cam-a/stored/extra", "emotion/devices/cam-a/model/blob"):
        live.handle(message(topic, b'{"stored_seq": 41, "device_id": "cam-a"}', retain=True))
    assert live.devices() == [] and live.device_ids() == []
    assert dict(live.invalid) == {} and dict(live.received) == {}, "neither counted as invalid nor as received"
    assert events_of(mailbox) == [], "nothing sent to the browsers"
    assert all("#" not in topic_filter for topic_filter in live.subscriptions()), "the hub asks only for its own channels"
