"""Routing without a broker: MQTT topic filters, shared subscriptions, the per-topic memo, handler dispatch."""

from __future__ import annotations

import itertools
import logging

import paho.mqtt.client as paho
import pytest

from comms import routing
from comms.routing import Router, check_filter, shared_filter, topic_matches
from comms.transport import Message


def message(topic: str, payload: bytes = b"x") -> Message:
    return Message(topic=topic, payload=payload, qos=1, retain=False, mid=1)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, incoming: Message) -> None:
        self.messages.append(incoming)


@pytest.mark.parametrize("topic_filter, topic, expected", [
    ("emotion/devices/cam-a/result", "emotion/devices/cam-a/result", True),
    ("emotion/devices/cam-a/result", "emotion/devices/cam-b/result", False),
    ("emotion/devices/+/result", "emotion/devices/cam-a/result", True),
    ("emotion/devices/+/result", "emotion/devices/cam-a/frame", False),
    ("emotion/devices/+/result", "emotion/devices/result", False),  # + is exactly one level
    ("emotion/devices/+/result", "emotion/devices//result", True),  # ...which may be empty
    ("emotion/devices/+", "emotion/devices/cam-a/result", False),
    ("emotion/devices/#", "emotion/devices/cam-a/result", True),
    ("emotion/devices/#", "emotion/devices", True),  # # includes the parent level
    ("emotion/devices/#", "emotion/devicesx", False),
    ("emotion/devices/#", "emotion/services/ingest/status", False),
    ("#", "emotion/devices/cam-a/result", True),
    ("+/+", "a/b", True),
    ("+/+", "a/b/c", False),
    ("+/#", "a", True),
    ("a/b", "a/b/", False),  # a trailing slash is one more (empty) level
    ("a/b/", "a/b/", True),
    ("#", "$SYS/broker/uptime", False),  # $-topics match no filter starting with a wildcard
    ("+/broker/uptime", "$SYS/broker/uptime", False),
    ("$SYS/#", "$SYS/broker/uptime", True),
    ("$SYS/+/uptime", "$SYS/broker/uptime", True),
    ("$share/ingest/emotion/devices/+/result", "emotion/devices/cam-a/result", True),
    ("$share/ingest/emotion/devices/+/result", "emotion/devices/cam-a/frame", False),
    ("$share/ingest/#", "emotion/devices/cam-a/result", True),
    ("$share/ingest/#", "$SYS/broker/uptime", False),
])
def test_topic_filters_match_as_mqtt_says(topic_filter, topic, expected):
    assert topic_matches(topic_filter, topic) is expected


def test_matching_agrees_with_paho_on_every_pair():
    """Our matcher (no paho, no matcher object per call) answers what paho's own does."""
    filters = ["#", "+", "+/+", "a/#", "a/+", "a/+/c", "+/b/#", "a/b", "a/b/c", "$SYS/#", "+/+/+", "a//c", "a/+/"]
    topics = ["a", "a/b", "a/b/c", "a/x/c", "b/b/c", "a//c", "a/b/", "$SYS/x", "$SYS", "x/b/c/d", ""]
    for topic_filter, topic in itertools.product(filters, topics):
        assert topic_matches(topic_filter, topic) == paho.topic_matches_sub(topic_filter, topic), (topic_filter, topic)


def test_shared_subscriptions_match_on_their_filter():
    assert shared_filter("$share/ingest/emotion/devices/#") == "emotion/devices/#"
    assert shared_filter("$share/g/a/b/c") == "a/b/c"
    assert shared_filter("emotion/devices/#") == "emotion/devices/#"
    for malformed in ("$share/", "$share/ingest", "$share/ingest/", "$share//a/b"):
        with pytest.raises(ValueError, match=r"\$share/<group>/<filter>"):
            shared_filter(malformed)


@pytest.mark.parametrize("invalid", ["", "a/#/b", "#/a", "a/b#", "a+/b", "a/+b", "$share/g/a/#/b"])
def test_invalid_filters_are_refused(invalid):
    with pytest.raises(ValueError):
        check_filter(invalid)
    with pytest.raises(ValueError):
        Router().subscribe(invalid, Inbox(), qos=1)


def test_the_first_matching_subscription_gets_the_message():
    router, specific, wildcard = Router(), Inbox(), Inbox()
    router.subscribe("emotion/devices/cam-a/result", specific, qos=1)
    router.subscribe("emotion/devices/+/result", wildcard, qos=1)
    assert router.dispatch(message("emotion/devices/cam-a/result", b"a"))
    assert router.dispatch(message("emotion/devices/cam-b/result", b"b"))
    assert [m.payload for m in specific.messages] == [b"a"] and [m.payload for m in wildcard.messages] == [b"b"]
    assert not router.dispatch(message("emotion/devices/cam-a/frame"))  # no route: nobody called
    assert router.subscriptions() == [("emotion/devices/cam-a/result", 1), ("emotion/devices/+/result", 1)]


def test_subscriptions_come_before_routes_without_one():
    router, routed, subscribed = Router(), Inbox(), Inbox()
    router.route("emotion/devices/#", routed)
    router.subscribe("emotion/devices/+/result", subscribed, qos=1)
    router.dispatch(message("emotion/devices/cam-a/result"))
    router.dispatch(message("emotion/devices/cam-a/frame"))
    assert [m.topic for m in subscribed.messages] == ["emotion/devices/cam-a/result"]
    assert [m.topic for m in routed.messages] == ["emotion/devices/cam-a/frame"]
    assert router.subscriptions() == [("emotion/devices/+/result", 1)]  # a route is not renewed on connect


def test_an_unsubscribed_filter_still_routes_what_the_session_holds():
    router, inbox, other = Router(), Inbox(), Inbox()
    router.subscribe("$share/ingest/emotion/devices/+/result", inbox, qos=1)
    router.subscribe("emotion/devices/+/status", other, qos=0)
    router.unsubscribe("$share/ingest/emotion/devices/+/result")
    assert router.subscriptions() == [("emotion/devices/+/status", 0)]
    assert router.dispatch(message("emotion/devices/cam-a/result"))
    assert len(inbox.messages) == 1


def test_the_memo_answers_repeated_topics_without_matching_again(monkeypatch):
    router, inbox = Router(), Inbox()
    router.subscribe("emotion/devices/+/result", inbox, qos=1)
    router.subscribe("emotion/devices/+/frame", inbox, qos=0)
    calls = []
    real = routing.topic_matches
    monkeypatch.setattr(routing, "topic_matches", lambda f, t: calls.append((f, t)) or real(f, t))
    first = router.lookup("emotion/devices/cam-a/frame")
    matched = len(calls)
    for _ in range(100):
        assert router.lookup("emotion/devices/cam-a/frame") is first
    assert matched == 2 and len(calls) == matched
    assert router.lookup("emotion/devices/cam-a/nothing") is None
    assert router.lookup("emotion/devices/cam-a/nothing") is None and len(calls) == matched + 2  # a miss is memoised too


def test_every_change_invalidates_the_memo():
    router, first, second = Router(), Inbox(), Inbox()
    assert router.lookup("emotion/devices/cam-a/result") is None  # memoised as "no route"
    router.subscribe("emotion/devices/+/result", first, qos=1)
    assert router.lookup("emotion/devices/cam-a/result").handler is first
    router.unsubscribe("emotion/devices/+/result")  # still routed, now without a subscription
    route = router.lookup("emotion/devices/cam-a/result")
    assert route.handler is first and route.qos is None
    router.subscribe("emotion/devices/cam-a/result", second, qos=1)  # a subscription beats a bare route
    assert router.lookup("emotion/devices/cam-a/result").handler is second
    router.route("emotion/devices/cam-b/#", first)
    assert router.lookup("emotion/devices/cam-b/frame").handler is first


def test_the_memo_is_bounded_and_stays_correct_past_its_bound():
    router, inbox = Router(max_memoised=8), Inbox()
    router.subscribe("emotion/devices/+/result", inbox, qos=1)
    for index in range(100):  # e.g. a hostile client inventing topic names
        assert router.lookup(f"emotion/devices/cam-{index}/result") is not None
        assert router.lookup(f"emotion/devices/cam-{index}/junk") is None
        assert len(router._memo) <= 8


def test_a_failing_handler_is_logged_and_does_not_stop_the_next_message(caplog):
    router, inbox = Router(), Inbox()

    def broken(incoming: Message) -> None:
        raise RuntimeError("handler bug")

    router.subscribe("emotion/devices/+/cmd", broken, qos=1)
    router.subscribe("emotion/devices/+/result", inbox, qos=1)
    with caplog.at_level(logging.ERROR, logger="comms.routing"):
        assert not router.dispatch(message("emotion/devices/cam-a/cmd"))
    assert router.dispatch(message("emotion/devices/cam-a/result"))
    assert len(inbox.messages) == 1
    assert any("handler for emotion/devices/+/cmd failed on emotion/devices/cam-a/cmd" in r.getMessage() for r in caplog.records)
    assert any(r.exc_info and "handler bug" in str(r.exc_info[1]) for r in caplog.records)
