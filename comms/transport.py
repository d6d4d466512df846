"""What the components need from an MQTT connection, free of paho.

The edge agent and forwarder, the cloud ingest, the web UI's broker client
and the retraining release depend on :class:`Transport`, not on a paho
class; :class:`comms.mqtt.MqttClient` is its one implementation. The types
that cross it (:class:`Message`, :class:`~comms.deliveries.Delivery`,
:class:`Availability`, :class:`MqttError`) live here or in
:mod:`comms.deliveries`, so code that only handles messages never imports
paho.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from comms.deliveries import Delivery
from contract.messages import STATUS_OFFLINE, STATUS_ONLINE, STATUS_STOPPED


class MqttError(RuntimeError):
    """A publish or subscribe the client could not even queue."""


@dataclass(frozen=True)
class Message:
    """An incoming message, free of paho types."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    user_properties: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None


Handler = Callable[[Message], None]


@dataclass(frozen=True)
class Availability:
    """Where a client announces itself; None to not announce."""

    topic: str
    online: str = STATUS_ONLINE
    offline: str = STATUS_OFFLINE
    stopped: str = STATUS_STOPPED


@runtime_checkable
class Transport(Protocol):
    """A long-lived MQTT connection: reconnects by itself, routes messages to handlers, tracks acks.

    Handlers run on the transport's network thread: keep them short and never
    block in them. Every wait takes a timeout.
    """

    last_error: str | None  # why the last connection attempt failed or was lost; None while fine
    connect_count: int  # successful connects so far: a change means a new connection

    def start(self) -> "Transport":
        """Begin connecting in the background; returns at once."""
        ...

    def stop(self, *, announce_stopped: bool = True, timeout: float = 5.0, end_session: bool = False) -> None:
        """Announce ``stopped`` (unless told not to), disconnect, end the network thread."""
        ...

    @property
    def connected(self) -> bool:
        ...

    def wait_connected(self, timeout: float) -> bool:
        ...

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 0,
        retain: bool = False,
        user_properties: list[tuple[str, str]] | None = None,
        content_type: str | None = None,
        expiry_s: int | None = None,
        response_topic: str | None = None,
    ) -> Delivery:
        """Queue a publish; the handle completes on the broker's acknowledgement. Raises MqttError."""
        ...

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> Delivery | None:
        """Route matching messages to ``handler``, subscribed again on every reconnect."""
        ...

    def route(self, topic_filter: str, handler: Handler) -> None:
        """Route matching messages to ``handler`` without subscribing (messages a session already holds)."""
        ...

    def unsubscribe(self, topic_filter: str) -> Delivery | None:
        ...

    def ack(self, message: Message) -> None:
        """Acknowledge one message received with manual acknowledgement."""
        ...

    def ack_all(self, messages: list[Message]) -> None:
        """Acknowledge a committed batch of messages received with manual acknowledgement."""
        ...
