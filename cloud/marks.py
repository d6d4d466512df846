"""Tells each edge what the cloud has stored: the retained stored mark per device.

After each commit the ingest asks the store for the marks of the epochs it
touched (every worker computes them from the committed rows, so several
workers' commits all count) and hands them here. A mark that moved is
published at most every ``min_interval_s`` per device (the edge then trims
its outbox); an unchanged one is repeated every ``repeat_s`` while the
device keeps sending, which tells its edge that the ingest is alive, so a
row stuck behind a gap (one the broker dropped) is sent again.

Marks only ever grow per (device, epoch); a retained mark that goes back
(two workers publishing out of order) only makes an edge send again what is
already stored, which the store skips.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from contract.messages import JSON_CONTENT_TYPE, StoredMark, utc_millis
from contract.topics import Topics

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]  # (topic, payload): retained, QoS 1


FORGET_AFTER_S = 600.0  # an epoch nobody sent anything of for this long is not tracked any more


@dataclass
class _EpochMark:
    seq: int
    published_seq: int | None = None
    published_at: float = float("-inf")
    touched_at: float = float("-inf")


class MarkPublisher:
    """Which marks are due, per (device, epoch); thread-safe (the writer thread and the main loop both call it)."""

    def __init__(self, topics: Topics, publish: Publish, min_interval_s: float = 0.2, repeat_s: float = 5.0) -> None:
        self.topics = topics
        self.publish = publish
        self.min_interval_s = min_interval_s
        self.repeat_s = repeat_s
        self.published = 0
        self._marks: dict[tuple[str, str], _EpochMark] = {}  # (device, epoch) -> mark
        self._lock = threading.Lock()

    def update(self, marks: dict[tuple[str, str], int], now: float) -> None:
        """Record the marks after a commit, then publish what is due."""
        with self._lock:
            for key, seq in marks.items():
                current = self._marks.setdefault(key, _EpochMark(seq))
                current.seq = max(current.seq, seq)
                current.touched_at = now
        self.publish_due(now)

    def publish_due(self, now: float) -> int:
        """Publish every mark that moved (throttled) or is due for its repeat; returns how many went."""
        with self._lock:
            due = [(key, mark) for key, mark in self._marks.items() if self._is_due(mark, now)]
            for _key, mark in due:
                mark.published_seq, mark.published_at = mark.seq, now
            self._forget_idle(now)
        for (device_id, epoch), mark in due:
            self._send(device_id, epoch, mark.seq)
        self.published += len(due)
        return len(due)

    def _forget_idle(self, now: float) -> None:
        idle = [key for key, mark in self._marks.items()
                if mark.published_seq == mark.seq and now - mark.touched_at > FORGET_AFTER_S]
        for key in idle:
            del self._marks[key]

    def _is_due(self, mark: _EpochMark, now: float) -> bool:
        since = now - mark.published_at
        if mark.seq != mark.published_seq:
            return since >= self.min_interval_s
        return since >= self.repeat_s and mark.touched_at > mark.published_at

    def _send(self, device_id: str, epoch: str, seq: int) -> None:
        message = StoredMark(device_id=device_id, epoch=epoch, seq=seq, stored_at=utc_millis())
        try:
            self.publish(self.topics.stored(device_id), message.to_json())
        except Exception as error:  # the next repeat sends it again; storing goes on
            log.warning("stored mark for %s not published: %s", device_id, error)


def mqtt_publisher(client) -> Publish:
    """Publish marks through our MQTT client: retained, QoS 1, JSON."""

    def publish(topic: str, payload: bytes) -> None:
        client.publish(topic, payload, qos=1, retain=True, content_type=JSON_CONTENT_TYPE)

    return publish
