"""Delivery tracking: which publish, subscribe or unsubscribe the broker has acknowledged, and how.

Pure Python (no paho), so it is tested without a broker. The transport gives
every packet it sends a message id (mid) and reports the broker's answer by
mid, on its network thread, possibly *before* the call that sent the packet
has returned: :class:`DeliveryTracker` keeps such early answers until the
handle is tracked. Mids run 1..65535 and then wrap to 1 (publishes and
subscriptions share one counter), so an early answer nobody claims is
dropped once the counter has moved well past it; it never completes a
later packet that happens to reuse the mid.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

MID_MAX = 65535  # mids run 1..MID_MAX, then wrap to 1
# An answer that arrived before its handle was tracked waits at most this many mids: publishing
# threads take mids and track them nearly in order, so a real one is claimed within a few; a quarter
# of the mids leaves room for a stalled thread and still drops a stale one long before the wrap.
EARLY_ANSWER_WINDOW = 16384


class ReasonCodeLike(Protocol):
    """What a broker's reason code offers (paho's ReasonCode has it): failed or not, and a name."""

    @property
    def is_failure(self) -> bool: ...


@dataclass
class Delivery:
    """Completes when the broker has acknowledged a publish (QoS 1) or it was written (QoS 0)."""

    mid: int
    qos: int
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    reason: str | None = None

    def wait(self, timeout: float) -> bool:
        """True once completed (acknowledged or failed: see ``reason``); False on timeout. Always give a timeout."""
        return self._done.wait(timeout)

    @property
    def acknowledged(self) -> bool:
        return self._done.is_set() and self.reason is None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _complete(self, reason: str | None) -> None:
        self.reason = reason
        self._done.set()


def completed(mid: int, qos: int, reason: str | None) -> Delivery:
    """A handle that is already done, e.g. a QoS 0 message dropped while offline."""
    delivery = Delivery(mid=mid, qos=qos)
    delivery._complete(reason)
    return delivery


def publish_outcome(reason_code: ReasonCodeLike) -> str | None:
    """None for a PUBACK that succeeded, else why the broker rejected the publish."""
    return f"broker rejected publish: {reason_code}" if reason_code.is_failure else None


def subscribe_outcome(reason_codes: Iterable[ReasonCodeLike]) -> str | None:
    return _failures("broker refused subscription", reason_codes)


def unsubscribe_outcome(reason_codes: Iterable[ReasonCodeLike]) -> str | None:
    return _failures("broker refused to unsubscribe", reason_codes)


def _failures(what: str, reason_codes: Iterable[ReasonCodeLike]) -> str | None:
    failures = [str(code) for code in reason_codes if code.is_failure]
    return f"{what}: {', '.join(failures)}" if failures else None


def mids_ahead(start: int, mid: int) -> int:
    """How many mids after ``start`` the counter reaches ``mid`` (0 for the same mid), across the wrap."""
    return (mid - start) % MID_MAX


def _near(mid: int, other: int) -> bool:
    return min(mids_ahead(mid, other), mids_ahead(other, mid)) <= EARLY_ANSWER_WINDOW


class DeliveryTracker:
    """Matches the broker's answers (by mid) to the handles of what was sent.

    # Arguments
        on_subscribed: called (under no lock) when every subscription of the
            latest :meth:`expect_subscriptions` is acknowledged.
    """

    def __init__(self, on_subscribed: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, Delivery] = {}
        self._early: dict[int, str | None] = {}  # answers whose handle was not tracked yet, oldest first
        self._subscriptions: set[int] = set()
        self._on_subscribed = on_subscribed
        self.subscribed = threading.Event()  # set while every expected subscription is acknowledged

    def track(self, delivery: Delivery) -> Delivery:
        """Complete ``delivery`` on its mid's answer (at once if it already came); returns it."""
        with self._lock:
            self._forget_unclaimed(delivery.mid)
            if delivery.mid not in self._early:
                self._pending[delivery.mid] = delivery
                return delivery
            reason = self._early.pop(delivery.mid)
        delivery._complete(reason)
        return delivery

    def expect_subscriptions(self, mids: Iterable[int]) -> None:
        """The subscriptions just (re)made on a new connection; ``subscribed`` is set once all are acknowledged."""
        with self._lock:
            self.subscribed.clear()
            self._subscriptions = {mid for mid in mids if not self._claim_early(mid)}
            done = not self._subscriptions
        if done:
            self._all_subscribed()

    def complete(self, mid: int, reason: str | None) -> None:
        """The broker's answer for ``mid``: None for success, else why it failed."""
        with self._lock:
            if mid in self._subscriptions:
                self._subscriptions.discard(mid)
                if self._subscriptions:
                    return
                delivery = None
            else:
                delivery = self._pending.pop(mid, None)
                if delivery is None:
                    self._early[mid] = reason
                    return
        if delivery is None:
            self._all_subscribed()
        else:
            delivery._complete(reason)

    @property
    def pending(self) -> int:
        """Handles still waiting for an answer."""
        with self._lock:
            return len(self._pending)

    def _claim_early(self, mid: int) -> bool:
        """Whether an early answer for ``mid`` was waiting (it is used up)."""
        if mid not in self._early:
            return False
        del self._early[mid]
        return True

    def _forget_unclaimed(self, newest: int) -> None:
        # An early answer is stale once the counter has moved far from it either way; a few mids
        # off is a publisher on another thread that took its mid just before or after this one.
        # Almost always empty: the scan is free.
        stale = [mid for mid in self._early if not _near(mid, newest)]
        for mid in stale:
            del self._early[mid]

    def _all_subscribed(self) -> None:
        self.subscribed.set()
        if self._on_subscribed is not None:
            self._on_subscribed()
