"""Moves results from the outbox to the broker, in order, deleting each only once acknowledged.

Runs in its own thread. While connected it keeps up to ``window`` QoS 1
publishes in flight; while disconnected it publishes nothing new (paho
re-sends what was in flight after the reconnect, in order). After an agent
restart everything still in the outbox goes out again from the oldest row.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

from comms.mqtt import Delivery, MqttClient, MqttError
from edge.outbox import Outbox, OutboxRow

log = logging.getLogger(__name__)

POLL_S = 0.05


@dataclass
class InFlight:
    row: OutboxRow
    delivery: Delivery


class Forwarder:
    def __init__(self, outbox: Outbox, client: MqttClient, window: int = 64) -> None:
        self.outbox = outbox
        self.client = client
        self.window = window
        self.published = 0
        self._in_flight: deque[InFlight] = deque()
        self._last_sent_id = 0
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="outbox-forwarder", daemon=True)

    def start(self) -> "Forwarder":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (everything acknowledged); False on timeout."""
        with self._progress:
            return self._progress.wait_for(self._empty, timeout)

    def _empty(self) -> bool:
        return not self._in_flight and self.outbox.depth() == 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # -- the loop ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._settle_acknowledged()
                if self.client.connected:
                    self._fill_window()
                if len(self._in_flight) >= self.window or not self.client.connected:
                    self._stop.wait(POLL_S)
                else:
                    self.outbox.wait_for_rows_after(self._last_sent_id, POLL_S)
            except Exception:  # keep forwarding whatever one bad row did
                log.exception("outbox forwarder error")
                self._stop.wait(1.0)

    def _fill_window(self) -> None:
        room = self.window - len(self._in_flight)
        if room <= 0:
            return
        for row in self.outbox.after(self._last_sent_id, room):
            try:
                delivery = self.client.publish(row.topic, row.payload, qos=1)
            except MqttError as error:
                self.outbox.move_to_dead_letter(row, str(error))
                self._last_sent_id = row.id
                continue
            self._in_flight.append(InFlight(row, delivery))
            self._last_sent_id = row.id

    def _settle_acknowledged(self) -> None:
        """Delete acknowledged rows; dead-letter rows the broker refused."""
        still_waiting: deque[InFlight] = deque()
        for item in self._in_flight:
            if not item.delivery.done:
                still_waiting.append(item)
            elif item.delivery.acknowledged:
                self.outbox.remove(item.row.id)
                self.published += 1
            else:
                self.outbox.move_to_dead_letter(item.row, item.delivery.reason or "rejected")
        self._in_flight = still_waiting
        with self._progress:  # wake drain() to re-check
            self._progress.notify_all()
