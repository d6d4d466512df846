"""Delivery tracking without a broker: mids to outcomes, answers before the handle, wrap-around, failures, waits."""

from __future__ import annotations

import threading
import time

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from comms.deliveries import (
    EARLY_ANSWER_WINDOW,
    MID_MAX,
    Delivery,
    DeliveryTracker,
    completed,
    mids_ahead,
    publish_outcome,
    subscribe_outcome,
    unsubscribe_outcome,
)


def test_an_answer_completes_the_handle_of_its_mid_only():
    tracker = DeliveryTracker()
    first, second = tracker.track(Delivery(mid=1, qos=1)), tracker.track(Delivery(mid=2, qos=1))
    tracker.complete(2, None)
    assert second.acknowledged and second.wait(0) and second.reason is None
    assert not first.done and not first.acknowledged and tracker.pending == 1
    tracker.complete(1, None)
    assert first.acknowledged and tracker.pending == 0


def test_an_answer_before_the_handle_is_kept_for_it():
    """paho can report the PUBACK on its network thread before publish() returned the mid to us."""
    tracker = DeliveryTracker()
    tracker.complete(5, "broker rejected publish: Quota exceeded")
    delivery = tracker.track(Delivery(mid=5, qos=1))
    assert delivery.done and not delivery.acknowledged and "Quota exceeded" in delivery.reason
    assert tracker.pending == 0
    again = tracker.track(Delivery(mid=5, qos=1))  # the answer was used up: a reused mid waits for its own
    assert not again.done


def test_a_reused_mid_waits_for_its_own_answer():
    tracker = DeliveryTracker()
    old = tracker.track(Delivery(mid=9, qos=1))
    tracker.complete(9, None)
    new = tracker.track(Delivery(mid=9, qos=1))
    assert old.acknowledged and not new.done
    tracker.complete(9, "broker rejected publish: Not authorized")
    assert new.done and new.reason.endswith("Not authorized") and old.acknowledged


def test_mids_wrap_from_65535_to_1():
    assert (mids_ahead(65534, 65535), mids_ahead(65535, 1), mids_ahead(65535, 3), mids_ahead(7, 7)) == (1, 1, 3, 0)
    assert mids_ahead(1, 65535) == MID_MAX - 1
    tracker = DeliveryTracker()
    last, wrapped = tracker.track(Delivery(mid=65535, qos=1)), tracker.track(Delivery(mid=1, qos=1))
    tracker.complete(1, None)
    assert wrapped.acknowledged and not last.done
    tracker.complete(65535, None)
    assert last.acknowledged


def test_an_early_answer_is_claimed_across_the_wrap():
    """Two publishing threads: 65535 and 2 were taken in that order, 2 was tracked first."""
    tracker = DeliveryTracker()
    tracker.complete(65535, None)
    assert not tracker.track(Delivery(mid=2, qos=1)).done
    assert tracker.track(Delivery(mid=65535, qos=1)).acknowledged


def test_an_unclaimed_answer_never_completes_a_later_packet_that_reuses_its_mid():
    tracker = DeliveryTracker()
    tracker.complete(7, "broker rejected publish: Unspecified error")  # nobody ever tracks this 7
    for mid in range(8, 8 + EARLY_ANSWER_WINDOW + 10):  # the counter moves on...
        tracker.complete(tracker.track(Delivery(mid=mid, qos=1)).mid, None)
    for mid in list(range(8 + EARLY_ANSWER_WINDOW + 10, MID_MAX + 1)) + list(range(1, 7)):  # ...and wraps
        tracker.complete(tracker.track(Delivery(mid=mid, qos=1)).mid, None)
    reused = tracker.track(Delivery(mid=7, qos=1))
    assert not reused.done, "a stale answer completed a new publish"
    tracker.complete(7, None)
    assert reused.acknowledged and tracker.pending == 0


def test_failure_reason_codes_become_reasons():
    assert publish_outcome(ReasonCode(PacketTypes.PUBACK, "Success")) is None
    assert publish_outcome(ReasonCode(PacketTypes.PUBACK, "No matching subscribers")) is None  # not a failure
    assert publish_outcome(ReasonCode(PacketTypes.PUBACK, "Payload format invalid")) == "broker rejected publish: Payload format invalid"
    granted = [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1"), ReasonCode(PacketTypes.SUBACK, "Granted QoS 0")]
    assert subscribe_outcome(granted) is None
    refused = granted + [ReasonCode(PacketTypes.SUBACK, "Not authorized")]
    assert subscribe_outcome(refused) == "broker refused subscription: Not authorized"
    assert unsubscribe_outcome([ReasonCode(PacketTypes.UNSUBACK, "Success")]) is None
    assert unsubscribe_outcome([ReasonCode(PacketTypes.UNSUBACK, "No subscription found")]) is None
    assert unsubscribe_outcome([ReasonCode(PacketTypes.UNSUBACK, "Not authorized")]) == "broker refused to unsubscribe: Not authorized"


def test_a_failed_delivery_is_done_but_not_acknowledged():
    tracker = DeliveryTracker()
    delivery = tracker.track(Delivery(mid=3, qos=1))
    tracker.complete(3, publish_outcome(ReasonCode(PacketTypes.PUBACK, "Quota exceeded")))
    assert delivery.wait(1) and delivery.done and not delivery.acknowledged
    assert delivery.reason == "broker rejected publish: Quota exceeded"
    dropped = completed(0, 0, "not connected; QoS 0 message dropped")
    assert dropped.done and not dropped.acknowledged and dropped.wait(0)


def test_waits_end_at_their_timeout_and_wake_on_the_answer():
    tracker = DeliveryTracker()
    delivery = tracker.track(Delivery(mid=11, qos=1))
    started = time.monotonic()
    assert not delivery.wait(0.05)
    assert 0.04 <= time.monotonic() - started < 2.0
    waiting, results = threading.Event(), []

    def waiter() -> None:
        waiting.set()
        results.append(delivery.wait(10))

    thread = threading.Thread(target=waiter)
    thread.start()
    assert waiting.wait(5)
    tracker.complete(11, None)  # from "the network thread"
    thread.join(10)
    assert results == [True] and delivery.acknowledged


def test_subscribed_is_set_once_every_subscription_is_acknowledged():
    calls = []
    tracker = DeliveryTracker(on_subscribed=lambda: calls.append("all"))
    tracker.expect_subscriptions([4, 5, 6])
    assert not tracker.subscribed.is_set()
    tracker.complete(4, None)
    tracker.complete(6, subscribe_outcome([ReasonCode(PacketTypes.SUBACK, "Not authorized")]))
    assert not tracker.subscribed.is_set() and calls == []
    tracker.complete(5, None)
    assert tracker.subscribed.wait(0) and calls == ["all"]
    assert tracker.pending == 0  # subscription mids are not deliveries


def test_a_reconnect_expects_its_own_subscriptions():
    tracker = DeliveryTracker()
    tracker.expect_subscriptions([1, 2])
    tracker.complete(1, None)
    tracker.expect_subscriptions([3])  # the connection was lost before 2's SUBACK; on_connect subscribed again
    assert not tracker.subscribed.is_set()
    tracker.complete(3, None)
    assert tracker.subscribed.is_set()


def test_a_suback_before_the_expectation_counts_and_none_expected_is_subscribed_at_once():
    tracker = DeliveryTracker()
    tracker.complete(8, None)
    tracker.expect_subscriptions([8, 9])
    tracker.complete(9, None)
    assert tracker.subscribed.is_set()
    empty = DeliveryTracker()
    empty.expect_subscriptions([])
    assert empty.subscribed.is_set()
