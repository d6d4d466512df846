"""One browser stream's outgoing events: bounded, conflating, never blocking the producer.

Events are keyed, e.g. ``(device, "frame")``. A new event replaces a pending
one with the same key in place, so a slow browser skips straight to the
newest frame instead of working through a backlog of stale ones, and the
mailbox never holds more than one event per key. The producer (paho's
network thread) only ever takes a short, uncontended lock.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable


class Mailbox:
    """Pending events for one consumer; at most ``capacity`` distinct keys."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._pending: dict[Hashable, bytes] = {}
        self._condition = threading.Condition()
        self.closed = False
        self.superseded = 0  # events replaced by a newer one before being sent
        self.refused = 0  # events dropped because the mailbox was full
        self.delivered = 0

    def offer(self, key: Hashable, event: bytes) -> None:
        """Queue ``event`` (replacing a pending one with the same key); never blocks."""
        with self._condition:
            if self.closed:
                return
            if key in self._pending:
                self.superseded += 1
            elif len(self._pending) >= self.capacity:
                self.refused += 1
                return
            self._pending[key] = event
            self._condition.notify()

    def discard(self, predicate) -> None:
        """Drop pending events whose key matches ``predicate`` (e.g. a removed device's)."""
        with self._condition:
            for key in [key for key in self._pending if predicate(key)]:
                del self._pending[key]

    def take(self, timeout: float) -> list[bytes]:
        """Everything pending, oldest key first; waits up to ``timeout`` for something."""
        with self._condition:
            if not self._pending and not self.closed:
                self._condition.wait(timeout)
            events = list(self._pending.values())
            self._pending.clear()
            self.delivered += len(events)
            return events

    def close(self) -> None:
        with self._condition:
            self.closed = True
            self._pending.clear()
            self._condition.notify_all()
