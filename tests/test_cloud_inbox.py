"""The batch inbox between the MQTT network thread and the ingest (pure hand-over logic)."""

from __future__ import annotations

import threading
import time

from cloud.inbox import BatchInbox


def test_takes_what_arrived_within_the_fill_window():
    inbox = BatchInbox[int](batch_max=10)
    for number in range(3):
        inbox.put(number)
    assert inbox.take(first_wait_s=0.5, fill_wait_s=0.01) == [0, 1, 2]
    assert inbox.qsize() == 0


def test_an_empty_inbox_returns_nothing_after_the_first_wait():
    started = time.monotonic()
    assert BatchInbox[int](batch_max=10).take(first_wait_s=0.05, fill_wait_s=1.0) == []
    assert time.monotonic() - started < 0.5


def test_a_full_batch_is_handed_over_at_once_and_the_rest_waits_its_turn():
    inbox = BatchInbox[int](batch_max=4)
    for number in range(10):
        inbox.put(number)
    started = time.monotonic()
    assert inbox.take(first_wait_s=1.0, fill_wait_s=5.0) == [0, 1, 2, 3]
    assert inbox.take(first_wait_s=1.0, fill_wait_s=5.0) == [4, 5, 6, 7]
    assert time.monotonic() - started < 1.0, "full batches must not wait for the fill deadline"
    assert inbox.qsize() == 2


def test_the_consumer_wakes_when_a_producer_fills_the_batch():
    inbox = BatchInbox[int](batch_max=100)
    taken: list[list[int]] = []
    consumer = threading.Thread(target=lambda: taken.append(inbox.take(first_wait_s=5.0, fill_wait_s=30.0)))
    consumer.start()
    for number in range(100):
        inbox.put(number)
    consumer.join(timeout=5.0)
    assert not consumer.is_alive(), "the consumer slept past a full batch"
    assert taken == [list(range(100))]
