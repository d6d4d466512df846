"""Which handler gets an incoming message: MQTT topic filters, memoised per topic.

Pure Python (no paho), so it is tested without a broker. A :class:`Router`
holds the subscriptions (renewed on every reconnect) and the routes without a
subscription (for what a persistent session still holds after an
unsubscribe); the first matching one, subscriptions first, gets the message.
Handlers run on the transport's network thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from comms.transport import Handler, Message

log = logging.getLogger(__name__)

SHARE_PREFIX = "$share/"
MAX_MEMOISED_TOPICS = 4096


def shared_filter(topic_filter: str) -> str:
    """The filter a ``$share/<group>/<filter>`` subscription matches; any other filter as it is."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return topic_filter
    parts = topic_filter.split("/", 2)
    if len(parts) < 3 or not parts[1] or not parts[2]:
        raise ValueError(f"shared subscription {topic_filter!r} needs $share/<group>/<filter>")
    return parts[2]


def check_filter(topic_filter: str) -> None:
    """Raise ValueError unless ``topic_filter`` is a valid MQTT topic filter (shared or not)."""
    if not topic_filter:
        raise ValueError("empty topic filter")
    levels = shared_filter(topic_filter).split("/")
    for index, level in enumerate(levels):
        if level == "#" and index != len(levels) - 1:
            raise ValueError(f"topic filter {topic_filter!r}: '#' must be the last level")
        if level not in ("+", "#") and ("+" in level or "#" in level):
            raise ValueError(f"topic filter {topic_filter!r}: a wildcard must fill its whole level")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching: ``+`` is one level, a final ``#`` the parent and everything below it.

    Shared subscriptions match on their filter. Topics starting with ``$``
    (``$SYS/…``) match no filter that starts with a wildcard, as the MQTT
    specification says.
    """
    filter_levels = shared_filter(topic_filter).split("/")
    topic_levels = topic.split("/")
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or (level != "+" and level != topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


@dataclass(frozen=True)
class Route:
    """A handler for a topic filter; ``qos`` None when it routes without a subscription."""

    topic_filter: str
    handler: Handler
    qos: int | None = None

    def deliver(self, message: Message) -> bool:
        """Run the handler; False if it raised (logged: a handler bug must not kill the network thread)."""
        try:
            self.handler(message)
        except Exception:
            log.exception("handler for %s failed on %s", self.topic_filter, message.topic)
            return False
        return True


class Router:
    """Topic filters to handlers, the lookup memoised per topic.

    Matching every filter against every message was a fifth of the receive path
    at thousands of messages per second, and a fleet has few distinct topics.
    The memo is bounded so hostile topic names cannot grow it. Changes come from
    any thread, lookups from the network thread: the routes and the memo are
    replaced, never changed in place (a change replaces the routes before the
    memo, a lookup reads the memo before the routes), so a lookup racing with a
    change fills a memo that is being thrown away.
    """

    def __init__(self, max_memoised: int = MAX_MEMOISED_TOPICS) -> None:
        self._max_memoised = max_memoised
        self._subscribed: tuple[Route, ...] = ()
        self._routed_only: tuple[Route, ...] = ()
        self._routes: tuple[Route, ...] = ()  # what lookups read: subscriptions first
        self._changing = threading.Lock()  # one change at a time
        self._memo: dict[str, Route | None] = {}

    def subscribe(self, topic_filter: str, handler: Handler, qos: int) -> Route:
        check_filter(topic_filter)
        route = Route(topic_filter, handler, qos)
        with self._changing:
            self._replace(self._subscribed + (route,), self._routed_only)
        return route

    def route(self, topic_filter: str, handler: Handler) -> Route:
        check_filter(topic_filter)
        route = Route(topic_filter, handler)
        with self._changing:
            self._replace(self._subscribed, self._routed_only + (route,))
        return route

    def unsubscribe(self, topic_filter: str) -> None:
        """No longer subscribed to ``topic_filter``; its handlers still get what matches (held messages)."""
        with self._changing:
            ending = tuple(Route(r.topic_filter, r.handler) for r in self._subscribed if r.topic_filter == topic_filter)
            kept = tuple(r for r in self._subscribed if r.topic_filter != topic_filter)
            self._replace(kept, self._routed_only + ending)

    def subscriptions(self) -> list[tuple[str, int]]:
        """(filter, qos) of every subscription, in the order they were made: what to renew on connect."""
        return [(route.topic_filter, route.qos) for route in self._subscribed]

    def lookup(self, topic: str) -> Route | None:
        """The first route whose filter matches ``topic`` (subscriptions first), or None."""
        memo = self._memo
        try:
            return memo[topic]
        except KeyError:
            pass
        found = next((route for route in self._routes if topic_matches(route.topic_filter, topic)), None)
        if len(memo) >= self._max_memoised:
            memo.clear()
        memo[topic] = found
        return found

    def dispatch(self, message: Message) -> bool:
        """Hand ``message`` to its route's handler; False if none matched or the handler raised."""
        route = self.lookup(message.topic)
        if route is None:
            log.debug("no handler for %s", message.topic)
            return False
        return route.deliver(message)

    def _replace(self, subscribed: tuple[Route, ...], routed_only: tuple[Route, ...]) -> None:
        self._subscribed = subscribed
        self._routed_only = routed_only
        self._routes = subscribed + routed_only
        self._memo = {}
