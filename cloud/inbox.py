"""Where the MQTT network thread leaves messages for the ingest, taken a batch at a time."""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

Item = TypeVar("Item")


class BatchInbox(Generic[Item]):
    """A hand-over between one producer thread and one consumer that works in batches.

    A plain queue wakes its consumer for every message: at thousands of
    messages per second that is a context switch each, most of the cost of
    the hand-over. This inbox wakes the consumer when a batch starts and when
    it is full; otherwise the consumer sleeps until its batch deadline.
    """

    def __init__(self, batch_max: int) -> None:
        self.batch_max = batch_max
        self._items: list[Item] = []
        self._condition = threading.Condition(threading.Lock())

    def put(self, item: Item) -> None:
        with self._condition:
            self._items.append(item)
            if len(self._items) == 1 or len(self._items) == self.batch_max:
                self._condition.notify()

    def take(self, first_wait_s: float, fill_wait_s: float) -> list[Item]:
        """Up to ``batch_max`` items: waits ``first_wait_s`` for the first, then up to ``fill_wait_s`` to fill the batch."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._items, first_wait_s):
                return []
            deadline = time.monotonic() + fill_wait_s
            while len(self._items) < self.batch_max and (remaining := deadline - time.monotonic()) > 0:
                self._condition.wait(remaining)
            batch, self._items = self._items[: self.batch_max], self._items[self.batch_max :]
            return batch

    def qsize(self) -> int:
        return len(self._items)
