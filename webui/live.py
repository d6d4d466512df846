"""The live state of every device and its fan-out to browser streams.

:class:`LiveHub` receives every device message from the dashboard's broker
subscription (on paho's network thread), validates it with
:mod:`contract.validation`, keeps only the *latest* frame, result, status
and stats per device (at most ``max_devices`` devices, the least recently
seen dropped first) and offers each update, already encoded as a
Server-Sent Event, to every open stream's :class:`~webui.mailbox.Mailbox`.
Offering never blocks, so a slow browser cannot slow the network thread or
the other browsers: it skips frames instead.

Frames are forwarded as the base64 JPEG text they arrived as (checked, not
re-encoded): the browser shows them through a ``data:`` URL.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comms.transport import Message
from contract.messages import Result, Stats
from contract.topics import Channel, InvalidDeviceId, Topics
from contract.validation import (
    ContractError,
    FrameMeta,
    parse_frame,
    parse_reply,
    parse_result,
    parse_stats,
    parse_status,
)
from webui.commands import CommandLog
from webui.mailbox import Mailbox

log = logging.getLogger(__name__)

# Kinds of per-device event, in the order a new stream receives them.
SNAPSHOT_KINDS = ("status", "stats", "result", "frame")
SUBSCRIBED_CHANNELS = (Channel.FRAME, Channel.RESULT, Channel.STATUS, Channel.STATS, Channel.COMMAND_REPLY)
EXTRA_MAILBOX_SLOTS = 128  # replies and hub events on top of one slot per device and kind
RECENT_RESULTS_PER_DEVICE = 32  # to attach to a frame the result of that very frame (frames lag results)


class StreamLimitReached(RuntimeError):
    """Every stream slot is taken; the browser retries later."""


def encode_event(kind: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Event; compact JSON never contains a raw newline."""
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def encode_frame_event(data: dict[str, Any], jpeg_base64: bytes) -> bytes:
    """The frame event, with the base64 text spliced in as-is (it is plain ASCII, already checked)."""
    head = json.dumps(data, separators=(",", ":")).encode()
    return b"event: frame\ndata: " + head[:-1] + b',"jpeg":"' + jpeg_base64 + b'"}\n\n'


def milliseconds(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def summarise_result(result: Result) -> dict[str, Any]:
    """What a tile shows of a result: every face, largest first, without the crops."""
    faces = sorted(result.faces, key=lambda face: face.box.area, reverse=True)
    return {
        "seq": result.seq,
        "msg_id": result.msg_id,
        "captured_at": result.captured_at,
        "frame_number": result.frame_number,
        "frame": {"width": result.frame.width, "height": result.frame.height},
        "model": {"name": result.model.name, "version": result.model.version},
        "faces": [
            {
                "label": face.label,
                "smoothed_label": face.smoothed_label,
                "confidence": face.confidence,
                "probabilities": list(face.probabilities.as_tuple()),
                "box": [face.box.x, face.box.y, face.box.w, face.box.h],
                "track_id": face.track_id,
            }
            for face in faces
        ],
    }


def summarise_stats(stats: Stats) -> dict[str, Any]:
    return {
        "fps": stats.fps,
        "sent_at": stats.sent_at,
        "paused": stats.paused,
        "uptime_s": stats.uptime_s,
        "frames_processed": stats.frames_processed,
        "frames_dropped": stats.frames_dropped,
        "results_published": stats.results_published,
        "outbox_depth": stats.outbox_depth,
        "model": {"name": stats.model.name, "version": stats.model.version},
        "source": stats.source,
    }


def frame_meta(message: Message) -> FrameMeta | None:
    """The frame's link to its result (MQTT 5 user properties); None when absent or unreadable."""
    if not message.user_properties:
        return None
    try:
        return FrameMeta.from_properties(list(message.user_properties))
    except ContractError:
        return None


@dataclass
class DeviceState:
    """The latest of everything for one device, plus each as a ready-to-send event."""

    device_id: str
    last_seen: float | None = None
    status: str | None = None
    stats: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    frame_at: float | None = None
    events: dict[str, bytes] = field(default_factory=dict)
    recent_results: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)

    def remember_result(self, summary: dict[str, Any]) -> None:
        self.recent_results[summary["msg_id"]] = summary
        while len(self.recent_results) > RECENT_RESULTS_PER_DEVICE:
            self.recent_results.popitem(last=False)

    def summary(self) -> dict[str, Any]:
        return {
            "device": self.device_id,
            "status": self.status,
            "last_seen": milliseconds(self.last_seen),
            "stats": self.stats,
            "result": self.result,
            "last_frame_at": milliseconds(self.frame_at),
        }


class LiveHub:
    """Latest device state in memory, bounded, fanned out to streams without blocking."""

    def __init__(
        self,
        topics: Topics,
        *,
        max_devices: int,
        max_streams: int,
        commands: CommandLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topics = topics
        self.max_devices = max_devices
        self.max_streams = max_streams
        self.commands = commands
        self._clock = clock
        self._devices: dict[str, DeviceState] = {}
        self._streams: list[Mailbox] = []
        self._lock = threading.Lock()
        self._broker_connected = False
        self.received: Counter[str] = Counter()
        self.invalid: Counter[str] = Counter()
        self.last_invalid: str | None = None
        self.evicted = 0
        self._handlers = {
            Channel.FRAME: self._on_frame,
            Channel.RESULT: self._on_result,
            Channel.STATUS: self._on_status,
            Channel.STATS: self._on_stats,
            Channel.COMMAND_REPLY: self._on_reply,
        }

    def device_count(self) -> int:
        with self._lock:
            return len(self._devices)

    # == incoming (paho's network thread) ======================================================
    def subscriptions(self) -> list[str]:
        return [self.topics.all_devices(channel) for channel in SUBSCRIBED_CHANNELS]

    def handle(self, message: Message) -> None:
        """Validate one message and update the device; invalid ones are counted, never raised."""
        try:
            parsed = self.topics.parse(message.topic)
        except InvalidDeviceId as error:
            self._count_invalid("topic", str(error))
            return
        handler = self._handlers.get(parsed.channel) if parsed else None
        if handler is None:
            return
        self.received[parsed.channel.value] += 1
        try:
            handler(parsed.device_id, message)
        except ContractError as error:
            self._count_invalid(parsed.channel.value, f"{message.topic}: {error.reason}")

    def _count_invalid(self, channel: str, reason: str) -> None:
        self.invalid[channel] += 1
        self.last_invalid = reason[:300]
        log.debug("ignored invalid message: %s", reason)

    def _on_frame(self, device_id: str, message: Message) -> None:
        jpeg_base64 = message.payload.strip()
        parse_frame(jpeg_base64)
        meta = frame_meta(message)
        now = self._clock()
        data = {
            "device": device_id,
            "received_at": milliseconds(now),
            "frame_number": meta.frame_number if meta else None,
            "captured_at": meta.captured_at if meta else None,
            "result_msg_id": (meta.result_msg_id or None) if meta else None,
        }
        with self._lock:
            state = self._touch(device_id, now)
            state.frame_at = now
            # The frame's own result, when it came first: the browser then shows bars that match the picture.
            data["result"] = state.recent_results.get(data["result_msg_id"]) if data["result_msg_id"] else None
            self._update(state, "frame", encode_frame_event(data, jpeg_base64))

    def _on_result(self, device_id: str, message: Message) -> None:
        result = parse_result(message.payload, expected_device=device_id)
        now = self._clock()
        summary = summarise_result(result)
        with self._lock:
            state = self._touch(device_id, now)
            state.result = summary
            state.remember_result(summary)
            self._update(state, "result", encode_event("result", {"device": device_id, "seen": milliseconds(now), **summary}))

    def _on_status(self, device_id: str, message: Message) -> None:
        status = parse_status(message.payload)
        # A retained status may be days old: it says nothing about when the device was last seen.
        now = None if message.retain else self._clock()
        with self._lock:
            state = self._touch(device_id, now)
            state.status = status
            event = encode_event("status", {"device": device_id, "status": status, "seen": milliseconds(state.last_seen)})
            self._update(state, "status", event)

    def _on_stats(self, device_id: str, message: Message) -> None:
        stats = parse_stats(message.payload, expected_device=device_id)
        summary = summarise_stats(stats)
        now = None if message.retain else self._clock()
        with self._lock:
            state = self._touch(device_id, now)
            state.stats = summary
            event = encode_event("stats", {"device": device_id, "seen": milliseconds(state.last_seen), **summary})
            self._update(state, "stats", event)

    def _on_reply(self, device_id: str, message: Message) -> None:
        reply = parse_reply(message.payload)
        if reply.device_id != device_id:
            raise ContractError(f"reply device_id {reply.device_id!r} does not match the topic's device {device_id!r}")
        record = self.commands.record_reply(reply, self._clock()) if self.commands else None
        if record is None:
            return  # another dashboard's command
        with self._lock:
            self._fan_out(("reply", record.id), encode_event("reply", record.as_dict()))

    # == state (under the lock) ====================================================================
    def _touch(self, device_id: str, seen_at: float | None) -> DeviceState:
        state = self._devices.get(device_id)
        if state is None:
            state = self._devices[device_id] = DeviceState(device_id)
            self._evict_beyond_limit(keep=device_id)
        if seen_at is not None:
            state.last_seen = max(state.last_seen or 0.0, seen_at)
        return state

    def _evict_beyond_limit(self, keep: str) -> None:
        while len(self._devices) > self.max_devices:
            candidates = [state for name, state in self._devices.items() if name != keep]
            oldest = min(candidates, key=lambda state: state.last_seen or 0.0)
            del self._devices[oldest.device_id]
            self.evicted += 1
            for mailbox in self._streams:
                mailbox.discard(lambda key, gone=oldest.device_id: key[0] == gone)
            self._fan_out((oldest.device_id, "removed"), encode_event("removed", {"device": oldest.device_id}))

    def _update(self, state: DeviceState, kind: str, event: bytes) -> None:
        state.events[kind] = event
        self._fan_out((state.device_id, kind), event)

    def _fan_out(self, key: tuple, event: bytes) -> None:
        for mailbox in self._streams:
            mailbox.offer(key, event)

    # == broker connection ===========================================================================
    def set_broker_connected(self, connected: bool, reason: str = "") -> None:
        with self._lock:
            self._broker_connected = connected
            self._fan_out(("broker",), encode_event("broker", {"connected": connected, "reason": reason}))

    @property
    def broker_connected(self) -> bool:
        return self._broker_connected

    # == streams (request threads) ====================================================================
    def open_stream(self) -> Mailbox:
        """A mailbox pre-filled with the current state of every device; pair with :meth:`close_stream`."""
        mailbox = Mailbox(capacity=self.max_devices * len(SNAPSHOT_KINDS) + EXTRA_MAILBOX_SLOTS)
        with self._lock:
            if len(self._streams) >= self.max_streams:
                raise StreamLimitReached(f"all {self.max_streams} live streams are in use")
            mailbox.offer(("broker",), encode_event("broker", {"connected": self._broker_connected, "reason": ""}))
            for state in self._devices.values():
                for kind in SNAPSHOT_KINDS:
                    if kind in state.events:
                        mailbox.offer((state.device_id, kind), state.events[kind])
            self._streams.append(mailbox)
        return mailbox

    def close_stream(self, mailbox: Mailbox) -> None:
        mailbox.close()
        with self._lock:
            if mailbox in self._streams:
                self._streams.remove(mailbox)

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def close(self) -> None:
        """End every stream (server shutdown)."""
        with self._lock:
            streams, self._streams = self._streams, []
        for mailbox in streams:
            mailbox.close()

    # == reads =========================================================================================
    def devices(self) -> list[dict[str, Any]]:
        with self._lock:
            return [state.summary() for state in sorted(self._devices.values(), key=lambda state: state.device_id)]

    def device_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._devices)

    def counters(self) -> dict[str, Any]:
        return {
            "devices": len(self._devices),
            "streams": len(self._streams),
            "received": dict(self.received),
            "invalid": dict(self.invalid),
            "last_invalid": self.last_invalid,
            "evicted": self.evicted,
            "broker_connected": self._broker_connected,
        }
