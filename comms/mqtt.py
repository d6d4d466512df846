"""The paho-mqtt implementation of :class:`comms.transport.Transport` (2.x API, MQTT 5, TLS).

With :mod:`comms.speedups` (which also patches paho, and only when asked),
the one module that imports paho. Everything else talks MQTT through the
:class:`~comms.transport.Transport` protocol, which :class:`MqttClient` gives:

* TLS from :class:`~comms.settings.MqttSettings` (:mod:`comms.tls`), or
  username/password;
* automatic reconnection with capped, jittered exponential backoff
  (:func:`common.backoff.backoff_delay`), including when the very first
  connection fails (``connect_async`` + ``loop_start``);
* availability: a retained ``offline`` will, retained ``online`` on every
  (re)connect, retained ``stopped`` on a clean stop;
* :class:`~comms.deliveries.Delivery` handles that complete when the broker
  has *acknowledged* a publish (``on_publish``, matched by
  :class:`~comms.deliveries.DeliveryTracker`), which is what an outbox needs:
  paho's own ``wait_for_publish`` raises for messages queued while offline;
* subscriptions routed to handlers by topic filter (:class:`comms.routing.Router`),
  restored on reconnect;
* optional manual acknowledgement, so a consumer can ack only after its write
  has committed.

Handlers run on paho's network thread: keep them short (hand work to a
queue) and never block in them.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from comms import speedups
from comms.deliveries import Delivery, DeliveryTracker, completed, publish_outcome, subscribe_outcome, unsubscribe_outcome
from comms.routing import Router, topic_matches
from comms.settings import MqttSettings
from comms.tls import build_tls_context
from comms.transport import Availability, Handler, Message, MqttError
from common.backoff import backoff_delay

# The names callers imported from here before the split keep working.
__all__ = ["Availability", "Delivery", "Handler", "Message", "MqttClient", "MqttError", "build_tls_context", "topic_matches"]

log = logging.getLogger(__name__)

# Fixed header, topic length, packet id and properties of a PUBLISH, generously.
_PACKET_OVERHEAD_BYTES = 1024
# paho logs these at ERROR, yet they are what every lost connection, retry and stop looks like.
_CONNECTION_NOISE = ("Client is not connected", "failed to receive on socket", "timeout on socket")


class _PahoLog(logging.LoggerAdapter):
    """paho's log with its connection noise demoted: WARNING while reconnecting, INFO while stopping.

    An adapter rather than paho's ``on_log``: ``on_log`` formats every debug
    line (one per packet), the logger skips them unformatted.
    """

    def __init__(self, logger: logging.Logger, stopping: Callable[[], bool]) -> None:
        super().__init__(logger, {})
        self._stopping = stopping

    def log(self, level, msg, *args, **kwargs) -> None:
        if level >= logging.ERROR and isinstance(msg, str) and msg.startswith(_CONNECTION_NOISE):
            level = logging.INFO if self._stopping() else logging.WARNING
        super().log(level, msg, *args, **kwargs)


def _property(properties: Properties | None, name: str):
    """A received property or None; a dictionary lookup, since a missing attribute costs an exception."""
    return vars(properties).get(name) if properties is not None else None


def _user_properties(properties: Properties | None) -> tuple[tuple[str, str], ...]:
    pairs = _property(properties, "UserProperty") or []
    return tuple((str(key), str(value)) for key, value in pairs)


def _publish_properties(
    user_properties: list[tuple[str, str]] | None,
    content_type: str | None,
    expiry_s: int | None,
    response_topic: str | None,
) -> Properties | None:
    if not (user_properties or content_type or expiry_s or response_topic):
        return None
    properties = Properties(PacketTypes.PUBLISH)
    if user_properties:
        properties.UserProperty = list(user_properties)
    if content_type:
        properties.ContentType = content_type
    if expiry_s:
        properties.MessageExpiryInterval = int(expiry_s)
    if response_topic:
        properties.ResponseTopic = response_topic
    return properties


class MqttClient:
    """A long-lived MQTT 5 connection with reconnect, availability and acked publishes: the Transport.

    # Arguments
        settings: connection settings (host, TLS, session).
        availability: where to announce online/offline/stopped, or None.
        manual_ack: if True, QoS 1 messages are acknowledged only when the
            consumer calls :meth:`ack`; unacknowledged ones are redelivered
            after a reconnect (needs a persistent session).
        on_connection_change: called with (connected, reason) on every change.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        availability: Availability | None = None,
        manual_ack: bool = False,
        on_connection_change: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.availability = availability
        self._on_connection_change = on_connection_change
        self._router = Router()
        self._deliveries = DeliveryTracker(on_subscribed=self._log_subscribed)
        self.subscribed = self._deliveries.subscribed  # set once the broker acknowledged every subscription
        self._connected = threading.Event()
        self._stopping = False
        self._refused = False
        self._server_max_packet: int | None = None
        self.last_error: str | None = None
        self.connect_count = 0
        self._failed_attempts = 0  # since the last successful connect, for the backoff
        self._manual_ack = manual_ack
        self._client = self._build_client(manual_ack)

    # -- construction -----------------------------------------------------
    def _build_client(self, manual_ack: bool) -> paho.Client:
        settings = self.settings
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id or "",
            protocol=paho.MQTTv5,
            manual_ack=manual_ack,
        )
        client.enable_logger(_PahoLog(logging.getLogger("paho"), lambda: self._stopping))
        if settings.tls is not None:
            client.tls_set_context(build_tls_context(settings))
        if settings.username:
            client.username_pw_set(settings.username, settings.resolved_password())
        client.reconnect_delay_set(settings.reconnect_min_delay_s, settings.reconnect_max_delay_s)
        client.max_inflight_messages_set(settings.max_inflight)
        if self.availability is not None:
            client.will_set(self.availability.topic, self.availability.offline, qos=1, retain=True)
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        client.on_unsubscribe = self._handle_unsubscribe
        client.on_socket_open = self._handle_socket_open
        return client

    def _connect_properties(self) -> Properties | None:
        if not self.settings.session_expiry_s:
            return None
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        return properties

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> "MqttClient":
        """Begin connecting in the background; returns at once. Pair with :meth:`stop`."""
        self._client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=self.settings.clean_start,
            properties=self._connect_properties(),
        )
        self._client.loop_start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, *, announce_stopped: bool = True, timeout: float = 5.0, end_session: bool = False) -> None:
        """Clean shutdown: announce ``stopped`` (so no will fires), disconnect, end the loop.

        ``end_session`` asks the broker to discard this client id's persistent
        session now (MQTT 5 session expiry 0 on DISCONNECT) instead of keeping it.
        """
        self._stopping = True
        if self.availability is not None and announce_stopped and self.connected:
            delivery = self.publish(self.availability.topic, self.availability.stopped, qos=1, retain=True)
            if not delivery.wait(timeout):
                log.warning("broker did not acknowledge the 'stopped' status within %.1f s", timeout)
        properties = None
        if end_session:
            properties = Properties(PacketTypes.DISCONNECT)
            properties.SessionExpiryInterval = 0
        self._client.disconnect(properties=properties)
        self._client.loop_stop()
        self._connected.clear()

    def __enter__(self) -> "MqttClient":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- publish --------------------------------------------------------------
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
        """Queue a publish and return a handle that completes on the broker's ack.

        QoS 1 messages published while offline stay in paho's memory queue and
        go out after reconnecting; the handle completes then. QoS 0 messages
        published while offline are dropped by paho (frames are live data).
        """
        self._check_size(topic, payload)
        properties = _publish_properties(user_properties, content_type, expiry_s, response_topic)
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if qos == 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return completed(info.mid, qos, "not connected; QoS 0 message dropped")
        return self._deliveries.track(Delivery(mid=info.mid, qos=qos))

    def _check_size(self, topic: str, payload: bytes | str) -> None:
        # A packet over the broker's limit gets the connection dropped, and paho
        # would resend it after every reconnect: refuse it here instead.
        size = len(payload) + len(topic.encode()) + _PACKET_OVERHEAD_BYTES
        limit = min(self.settings.max_packet_bytes, self._server_max_packet or self.settings.max_packet_bytes)
        if size > limit:
            raise MqttError(f"publish to {topic} refused: {size} bytes exceed the broker's packet limit of {limit}")

    # -- subscribe ------------------------------------------------------------
    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> Delivery | None:
        """Route messages matching ``topic_filter`` to ``handler``; kept across reconnects.

        When connected, returns a handle that completes on the SUBACK (wait on it
        before relying on the subscription); otherwise it is made on connect.
        """
        self._router.subscribe(topic_filter, handler, qos)
        if not self.connected:
            return None
        result, mid = self._client.subscribe(topic_filter, qos=qos)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None  # lost the connection meanwhile: on_connect subscribes again
        return self._deliveries.track(Delivery(mid=mid, qos=qos))

    def route(self, topic_filter: str, handler: Handler) -> None:
        """Send messages matching ``topic_filter`` to ``handler`` without subscribing to it.

        For the messages a persistent session already holds from subscriptions
        made earlier (see :meth:`unsubscribe`).
        """
        self._router.route(topic_filter, handler)

    def unsubscribe(self, topic_filter: str) -> Delivery | None:
        """End a subscription; the handle completes on the broker's UNSUBACK.

        Messages the broker already holds for this session under that filter
        (queued while away, or in flight) still arrive, and still reach the
        handler; no new ones do, and it is not renewed on reconnect. Returns
        None when offline: a persistent session then still has the
        subscription at the broker, so call again once connected.
        """
        self._router.unsubscribe(topic_filter)
        if not self.connected:
            return None
        result, mid = self._client.unsubscribe(topic_filter)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        return self._deliveries.track(Delivery(mid=mid, qos=0))

    def ack(self, message: Message) -> None:
        """Acknowledge a message received with ``manual_ack=True`` (after the write committed)."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    def ack_all(self, messages: list[Message]) -> None:
        """Acknowledge a committed batch of messages, the QoS 1 ones in one socket write when it can.

        With :mod:`comms.speedups` enabled, the batch's PUBACKs go out as one
        buffer (byte for byte what ``ack()`` sends); otherwise, and for QoS 2
        (PUBCOMP), message by message through ``ack()``.
        """
        batched = [message for message in messages if message.qos == 1]
        for message in messages:
            if message.qos == 2:
                self.ack(message)
        if not batched or not self._manual_ack:  # paho acknowledged them on arrival
            return
        if speedups.queue_pubacks(self._client, [message.mid for message in batched]):
            return
        for message in batched:
            self.ack(message)

    # -- paho callbacks (network thread) --------------------------------------
    def _handle_socket_open(self, client, userdata, sock) -> None:
        if self.settings.tcp_nodelay:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as error:  # e.g. a unix or websocket transport
                log.debug("TCP_NODELAY not set: %s", error)

    def _handle_connect(self, client, userdata, flags, reason_code: ReasonCode, properties) -> None:
        if reason_code.is_failure:
            # The broker answered but refused us (bad credentials, not authorised):
            # we are *not* connected, whatever the socket says.
            self._refused = True
            self.last_error = f"broker refused the connection: {reason_code}"
            log.error("%s (client id %s)", self.last_error, self.settings.client_id)
            return
        self.connect_count += 1
        self._failed_attempts = 0
        self._server_max_packet = getattr(properties, "MaximumPacketSize", None)
        self.last_error = None
        self._refused = False
        self._subscribe_all(client)
        if self.availability is not None:
            # Through self.publish so its ack is tracked like any other.
            self.publish(self.availability.topic, self.availability.online, qos=1, retain=True)
        self._connected.set()
        log.info("connected to %s:%s (session present: %s)", self.settings.host, self.settings.port, flags.session_present)
        self._notify(True, "connected")

    def _subscribe_all(self, client: paho.Client) -> None:
        """(Re)subscribe every handler; ``subscribed`` is set once the broker acknowledged them all."""
        mids = []
        for topic_filter, qos in self._router.subscriptions():
            result, mid = client.subscribe(topic_filter, qos=qos)
            if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
                mids.append(mid)
        self._deliveries.expect_subscriptions(mids)

    def _log_subscribed(self) -> None:
        log.info("subscriptions active: %s", ", ".join(f for f, _qos in self._router.subscriptions()))

    def _handle_connect_fail(self, client, userdata) -> None:
        self.last_error = f"cannot connect to {self.settings.host}:{self.settings.port}"
        if not self._stopping:
            log.warning("%s; retrying in %.1f s", self.last_error, self._schedule_retry(client))

    def _schedule_retry(self, client: paho.Client) -> float:
        """Set paho's wait before its next attempt from our backoff (paho's own has no jitter); returns it."""
        delay = backoff_delay(self._failed_attempts, self.settings.reconnect_min_delay_s, self.settings.reconnect_max_delay_s)
        self._failed_attempts += 1
        client.reconnect_delay_set(delay, delay)  # min == max: paho waits exactly this once
        return delay

    def _handle_disconnect(self, client, userdata, flags, reason_code: ReasonCode, properties) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not was_connected and not self._stopping and not self._refused:
            # Dropped before a CONNACK: typically the broker rejected our certificate.
            self.last_error = f"connection closed during handshake ({reason_code}); check certificate and CA"
        if not self._stopping:
            log.warning("disconnected from broker (%s); reconnecting in %.1f s", reason_code, self._schedule_retry(client))
        if was_connected:
            self._notify(False, str(reason_code))

    def _handle_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        topic = message.topic  # a property that decodes the bytes on every read
        route = self._router.lookup(topic)
        if route is None:
            log.debug("no handler for %s", topic)
            return
        properties = getattr(message, "properties", None)
        incoming = Message(
            topic=topic,
            payload=message.payload,
            qos=message.qos,
            retain=bool(message.retain),
            mid=message.mid,
            user_properties=_user_properties(properties),
            content_type=_property(properties, "ContentType"),
            response_topic=_property(properties, "ResponseTopic"),
            correlation_data=_property(properties, "CorrelationData"),
        )
        route.deliver(incoming)

    # Publishes and subscriptions share paho's mid counter, so one tracker serves both.
    def _handle_publish(self, client, userdata, mid: int, reason_code: ReasonCode, properties) -> None:
        self._deliveries.complete(mid, publish_outcome(reason_code))

    def _handle_unsubscribe(self, client, userdata, mid: int, reason_codes: list[ReasonCode], properties) -> None:
        self._deliveries.complete(mid, unsubscribe_outcome(reason_codes))

    def _handle_subscribe(self, client, userdata, mid: int, reason_codes: list[ReasonCode], properties) -> None:
        self._deliveries.complete(mid, subscribe_outcome(reason_codes))

    def _notify(self, connected: bool, reason: str) -> None:
        if self._on_connection_change is not None:
            try:
                self._on_connection_change(connected, reason)
            except Exception:
                log.exception("connection-change callback failed")
