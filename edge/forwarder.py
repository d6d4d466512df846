"""Moves results from the outbox to the broker, in order; forgets each only once the cloud has stored it.

Runs in its own thread. While connected it keeps up to ``window`` QoS 1
publishes in flight. A broker acknowledgement (PUBACK) only means "in the
broker's memory": Mosquitto writes its queues to disk on autosave, so a broker
crash loses what it acknowledged since. So, with ``keep_until = "stored"``
(the default), a row leaves the outbox when the ingest's retained *stored
mark* (``<prefix>/devices/<id>/stored``: every seq 0..n of an epoch is
committed) covers it, and rows the broker acknowledged but the cloud never
stored are sent again:

* after every reconnect: the broker may have restarted without them;
* when an ingest worker comes online (its retained status on
  ``<prefix>/services/<identity>/status``): a broker that lost the ingest's
  session (crash before autosave) dropped what arrived for it meanwhile;
* when the oldest row has waited ``resend_after_s`` although the ingest is
  alive (a mark arrived meanwhile): the broker dropped it (e.g. a full queue).

After a trigger the forwarder waits for a fresh mark (or ``MARK_WAIT_S``),
trims with it, then resends only the rows it had sent before the trigger.

Resending is safe because the ingest stores each ``(device_id, epoch, seq)``
once. With ``keep_until = "acknowledged"`` (a broker without our ingest) a
row leaves on its PUBACK, as rows from an outbox older than epochs always do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

from comms.deliveries import Delivery
from comms.transport import Message, MqttError, Transport
from contract.validation import ContractError, parse_stored_mark
from edge.outbox import LEGACY_EPOCH, Outbox, OutboxRow

log = logging.getLogger(__name__)

POLL_S = 0.05
MARK_WAIT_S = 2.0  # after a reconnect, how long to wait for the retained mark before resending

KeepUntil = Literal["stored", "acknowledged"]


@dataclass
class InFlight:
    row: OutboxRow
    delivery: Delivery
    resent: bool = False


@dataclass
class Resend:
    """Rows with ids in (after_id, up_to_id] go out again (those still in the outbox)."""

    after_id: int
    up_to_id: int


class Forwarder:
    def __init__(
        self,
        outbox: Outbox,
        client: Transport,
        window: int = 64,
        keep_until: KeepUntil = "stored",
        device_id: str | None = None,
        resend_after_s: float = 30.0,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.window = window
        self.keep_until = keep_until
        self.device_id = device_id
        self.resend_after_s = resend_after_s
        self.published = 0  # acknowledged by the broker
        self.confirmed = 0  # stored by the cloud (rows its marks removed)
        self.resent = 0
        self._in_flight: deque[InFlight] = deque()
        self._last_sent_id = 0
        self._resend: Resend | None = None
        self._marks: deque[tuple[str, int]] = deque()  # (epoch, seq), filled on paho's thread
        self._last_mark_at = 0.0  # monotonic time the last mark arrived (the ingest is alive)
        self._seen_connects = 0
        self._armed: tuple[float, int, str] | None = None  # (since, resend rows up to this id, why)
        self._ingest_came_online = threading.Event()
        self._oldest = (None, time.monotonic())  # (oldest row id, since when it is the oldest)
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
        """Wait until the outbox is empty (everything stored, or acknowledged); False on timeout."""
        with self._progress:
            return self._progress.wait_for(self._empty, timeout)

    def _empty(self) -> bool:
        return not self._in_flight and self.outbox.depth() == 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # -- the stored mark (paho's thread: parse and queue, never block) --------------------
    def on_stored_mark(self, message: Message) -> None:
        try:
            mark = parse_stored_mark(message.payload, expected_device=self.device_id)
        except ContractError as error:
            log.warning("ignoring a bad stored mark on %s: %s", message.topic, error.reason)
            return
        self._marks.append((mark.epoch, mark.seq))
        self._last_mark_at = time.monotonic()

    def on_ingest_status(self, message: Message) -> None:
        """An ingest worker's retained availability; 'online' means it may not have what we sent."""
        if message.payload == b"online":
            self._ingest_came_online.set()

    # -- the loop ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._apply_marks()
                self._settle_acknowledged()
                self._plan_resend()
                if self.client.connected:
                    self._fill_window()
                if len(self._in_flight) >= self.window or not self.client.connected:
                    self._stop.wait(POLL_S)
                else:
                    self.outbox.wait_for_rows_after(self._last_sent_id, POLL_S)
            except Exception:  # keep forwarding whatever one bad row did
                log.exception("outbox forwarder error")
                self._stop.wait(1.0)

    def _apply_marks(self) -> None:
        while self._marks:
            epoch, seq = self._marks.popleft()
            removed = self.outbox.confirm(epoch, seq)
            self.confirmed += removed
        self._notify_progress()

    def _plan_resend(self) -> None:
        """Decide whether rows the broker acknowledged but the cloud has not stored go out again."""
        if self.keep_until != "stored":
            return
        now = time.monotonic()
        if self.client.connect_count != self._seen_connects:
            self._seen_connects = self.client.connect_count
            if self._seen_connects > 1:
                self._arm(now, "after a reconnect (the broker may have lost them)")
        if self._ingest_came_online.is_set():
            self._ingest_came_online.clear()
            self._arm(now, "an ingest worker came online (the broker may have dropped them)")
        if self._resend is not None:
            return
        if self._armed is not None:
            since, up_to, why = self._armed
            if self._last_mark_at > since or now - since >= MARK_WAIT_S:
                self._armed = None
                self._apply_marks()  # trim with the freshest mark: resend only what is missing
                self._schedule_resend(up_to, why)
            return
        if self._oldest_is_stuck(now):
            self._schedule_resend(self._last_sent_id, f"the cloud has not stored it for {self.resend_after_s:.0f} s")

    def _arm(self, now: float, why: str) -> None:
        """Resend, soon, what was sent before now (rows sent after this are fresh on this connection)."""
        since = self._armed[0] if self._armed else now
        self._armed = (since, self._last_sent_id, why)

    def _oldest_is_stuck(self, now: float) -> bool:
        """The oldest row was sent, has waited resend_after_s, and the ingest is alive (marks arrive)."""
        first = self.outbox.first_id()
        if first != self._oldest[0]:
            self._oldest = (first, now)
            return False
        waited = now - self._oldest[1]
        sent = first is not None and first <= self._last_sent_id and not self._is_in_flight(first)
        ingest_alive = now - self._last_mark_at < self.resend_after_s
        if sent and waited >= self.resend_after_s and ingest_alive:
            self._oldest = (first, now)  # next try only after another full wait
            return True
        return False

    def _is_in_flight(self, row_id: int) -> bool:
        return any(item.row.id == row_id for item in self._in_flight)

    def _schedule_resend(self, up_to: int, why: str) -> None:
        first = self.outbox.first_id()
        if first is None or first > up_to:
            return  # nothing sent before is still waiting
        self._resend = Resend(after_id=first - 1, up_to_id=up_to)
        log.info("sending again what the cloud has not confirmed yet (outbox rows %d..%d): %s", first, up_to, why)

    def _fill_window(self) -> None:
        room = self.window - len(self._in_flight)
        if room > 0 and self._resend is not None:
            room -= self._fill_resend(room)
        if room <= 0:
            return
        for row in self.outbox.after(self._last_sent_id, room):
            self._send(row)
            self._last_sent_id = row.id

    def _fill_resend(self, room: int) -> int:
        """Send the next rows of the planned resend; returns how many went out."""
        plan = self._resend
        in_flight = {item.row.id for item in self._in_flight}
        rows = self.outbox.after(plan.after_id, room)
        sent = 0
        for row in rows:
            if row.id > plan.up_to_id:
                self._resend = None  # the rest were never sent before: the normal cursor takes them
                return sent
            plan.after_id = row.id
            if row.id not in in_flight:
                self._send(row, resent=True)
                sent += 1
        if len(rows) < room or plan.after_id >= plan.up_to_id:
            self._resend = None
        return sent

    def _send(self, row: OutboxRow, resent: bool = False) -> None:
        """Publish one row; one the client refuses outright goes to the dead letters."""
        try:
            delivery = self.client.publish(row.topic, row.payload, qos=1)
        except MqttError as error:
            self.outbox.move_to_dead_letter(row, str(error))
            return
        self._in_flight.append(InFlight(row, delivery, resent))
        self.resent += resent

    def _settle_acknowledged(self) -> None:
        """Count acknowledged rows (and forget them if that is all we wait for); dead-letter refused ones."""
        still_waiting: deque[InFlight] = deque()
        for item in self._in_flight:
            if not item.delivery.done:
                still_waiting.append(item)
            elif item.delivery.acknowledged:
                if self.keep_until == "acknowledged" or item.row.epoch == LEGACY_EPOCH:
                    self.outbox.remove(item.row.id)
                self.published += not item.resent
            else:
                self.outbox.move_to_dead_letter(item.row, item.delivery.reason or "rejected")
        self._in_flight = still_waiting
        self._notify_progress()

    def _notify_progress(self) -> None:
        with self._progress:  # wake drain() to re-check
            self._progress.notify_all()
