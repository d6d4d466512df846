"""The project's only door to paho-mqtt (2.x API, MQTT 5, TLS).

Everything else talks MQTT through :class:`MqttClient`, which gives:

* TLS from :class:`~comms.settings.MqttSettings` (minimum version, client
  certificate, hostname check), or username/password;
* automatic reconnection with capped, jittered exponential backoff
  (:func:`common.backoff.backoff_delay`), including when the very first
  connection fails (``connect_async`` + ``loop_start``);
* availability: a retained ``offline`` will, retained ``online`` on every
  (re)connect, retained ``stopped`` on a clean stop;
* :class:`Delivery` handles that complete when the broker has *acknowledged*
  a publish (``on_publish``), which is what an outbox needs: paho's own
  ``wait_for_publish`` raises for messages queued while offline;
* subscriptions routed to handlers by topic filter, restored on reconnect;
* optional manual acknowledgement, so a consumer can ack only after its write
  has committed.

Handlers run on paho's network thread: keep them short (hand work to a
queue) and never block in them.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from comms.settings import MqttSettings
from common.backoff import backoff_delay
from contract.messages import STATUS_OFFLINE, STATUS_ONLINE, STATUS_STOPPED

log = logging.getLogger(__name__)

# Fixed header, topic length, packet id and properties of a PUBLISH, generously.
_PACKET_OVERHEAD_BYTES = 1024
_MAX_MEMOISED_ROUTES = 4096
# PUBACK: fixed header 0x40, remaining length 2, packet id (MQTT 5 lets a success omit the reason code).
_PUBACK = struct.Struct("!BBH")
_PUBACK_HEADER = 0x40
_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# paho logs these at ERROR, yet they are what every lost connection, retry and stop looks like.
_CONNECTION_NOISE = ("Client is not connected", "failed to receive on socket", "timeout on socket")


class MqttError(RuntimeError):
    """A publish or subscribe the client could not even queue."""


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


@dataclass
class Delivery:
    """Completes when the broker has acknowledged a publish (QoS 1) or it was written (QoS 0)."""

    mid: int
    qos: int
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    reason: str | None = None

    def wait(self, timeout: float) -> bool:
        """True once acknowledged; False on timeout. Always give a timeout."""
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


@dataclass(frozen=True)
class Availability:
    """Where this client announces itself; None to not announce."""

    topic: str
    online: str = STATUS_ONLINE
    offline: str = STATUS_OFFLINE
    stopped: str = STATUS_STOPPED


def build_tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """A client TLS context: verify the broker against our CA, present our certificate."""
    assert settings.tls is not None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.tls.ca_file))
    context.minimum_version = _TLS_VERSIONS[settings.tls.min_version]
    if settings.tls.cert_file is not None:
        context.load_cert_chain(str(settings.tls.cert_file), str(settings.tls.key_file))
    return context


def _share_paho_property_tables() -> bool:
    """Make paho's ``Properties`` cheap to create; returns whether it applied.

    paho 2.x builds two 27-entry lookup tables in every ``Properties``
    instance, and ``clear()`` probes all 27 names; every MQTT 5 message
    received creates and clears one. That was a third of the receive path at
    thousands of messages per second. The tables are constants that paho never
    modifies, so every instance can share one copy; ``clear()`` then only
    drops the properties actually set. Skipped if paho's layout differs from
    the one this was written for.
    """
    prototype = Properties(PacketTypes.PUBLISH)
    tables = {name: value for name, value in vars(prototype).items() if name != "packetType"}
    if set(tables) != {"types", "names", "properties"} or getattr(Properties, "_emq_shared_tables", False):
        return False

    def __init__(self, packetType):
        object.__setattr__(self, "packetType", packetType)
        self.__dict__.update(tables)

    def clear(self):
        for name in [name for name in vars(self) if name not in _PAHO_PROPERTIES_OWN_FIELDS]:
            delattr(self, name)

    Properties.__init__ = __init__
    Properties.clear = clear
    Properties._emq_shared_tables = True
    return True


_PAHO_PROPERTIES_OWN_FIELDS = frozenset({"packetType", "types", "names", "properties"})
_share_paho_property_tables()


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


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT wildcard matching (``+`` and ``#``); shared subscriptions are matched on their filter."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    return paho.topic_matches_sub(topic_filter, topic)


class MqttClient:
    """A long-lived MQTT 5 connection with reconnect, availability and acked publishes.

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
        self._handlers: list[tuple[str, int, Handler]] = []
        self._routed_only: list[tuple[str, Handler]] = []  # unsubscribed filters whose held messages still arrive
        self._routes: dict[str, tuple[str, Handler] | None] = {}
        self._deliveries: dict[int, Delivery] = {}
        self._early_acks: dict[int, str | None] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.subscribed = threading.Event()
        self._pending_subscriptions: set[int] = set()
        self._stopping = False
        self._refused = False
        self._server_max_packet: int | None = None
        self.last_error: str | None = None
        self.connect_count = 0
        self._failed_attempts = 0  # since the last successful connect, for the backoff
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
        delivery = Delivery(mid=info.mid, qos=qos)
        if qos == 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            delivery._complete("not connected; QoS 0 message dropped")
            return delivery
        self._track(delivery)
        return delivery

    def _check_size(self, topic: str, payload: bytes | str) -> None:
        # A packet over the broker's limit gets the connection dropped, and paho
        # would resend it after every reconnect: refuse it here instead.
        size = len(payload) + len(topic.encode()) + _PACKET_OVERHEAD_BYTES
        limit = min(self.settings.max_packet_bytes, self._server_max_packet or self.settings.max_packet_bytes)
        if size > limit:
            raise MqttError(f"publish to {topic} refused: {size} bytes exceed the broker's packet limit of {limit}")

    def _track(self, delivery: Delivery) -> None:
        # on_publish can fire on the network thread before publish() returned
        # here; such acks wait in _early_acks until we see the mid.
        with self._lock:
            if delivery.mid in self._early_acks:
                reason = self._early_acks.pop(delivery.mid)
            else:
                self._deliveries[delivery.mid] = delivery
                return
        delivery._complete(reason)

    # -- subscribe ------------------------------------------------------------
    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> Delivery | None:
        """Route messages matching ``topic_filter`` to ``handler``; kept across reconnects.

        When connected, returns a handle that completes on the SUBACK (wait on it
        before relying on the subscription); otherwise it is made on connect.
        """
        self._handlers.append((topic_filter, qos, handler))
        self._routes = {}  # a new memo (not clear()): a lookup racing with us fills the old one
        if not self.connected:
            return None
        result, mid = self._client.subscribe(topic_filter, qos=qos)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None  # lost the connection meanwhile: on_connect subscribes again
        delivery = Delivery(mid=mid, qos=qos)
        self._track(delivery)
        return delivery

    def route(self, topic_filter: str, handler: Handler) -> None:
        """Send messages matching ``topic_filter`` to ``handler`` without subscribing to it.

        For the messages a persistent session already holds from subscriptions
        made earlier (see :meth:`unsubscribe`).
        """
        self._routed_only.append((topic_filter, handler))
        self._routes = {}

    def unsubscribe(self, topic_filter: str) -> Delivery | None:
        """End a subscription; the handle completes on the broker's UNSUBACK.

        Messages the broker already holds for this session under that filter
        (queued while away, or in flight) still arrive, and still reach the
        handler; no new ones do, and it is not renewed on reconnect. Returns
        None when offline: a persistent session then still has the
        subscription at the broker, so call again once connected.
        """
        kept = [entry for entry in self._handlers if entry[0] != topic_filter]
        self._routed_only += [(f, handler) for f, _qos, handler in self._handlers if f == topic_filter]
        self._handlers = kept
        self._routes = {}
        if not self.connected:
            return None
        result, mid = self._client.unsubscribe(topic_filter)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        delivery = Delivery(mid=mid, qos=0)
        self._track(delivery)
        return delivery

    def ack(self, message: Message) -> None:
        """Acknowledge a message received with ``manual_ack=True`` (after the write committed)."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    def ack_all(self, messages: list[Message]) -> None:
        """Acknowledge a committed batch of QoS 1 messages in one socket write.

        paho's ``ack()`` queues each PUBACK as its own packet, written as its own
        TLS record with its own system call (and wakes the network thread each
        time); at thousands of messages per second that was a fifth of the
        receive path. The PUBACKs here are byte-for-byte what ``ack()`` sends,
        queued as one buffer through paho's packet queue, the same path
        ``ack()`` takes. QoS 2 messages (PUBCOMP) go through ``ack()``.
        """
        batched = [message for message in messages if message.qos == 1]
        for message in messages:
            if message.qos == 2:
                self.ack(message)
        if not batched:
            return
        queue_packet = getattr(self._client, "_packet_queue", None)
        if queue_packet is None:  # a paho without that method: one write per ack, still correct
            for message in batched:
                self.ack(message)
            return
        pubacks = b"".join(_PUBACK.pack(_PUBACK_HEADER, 2, message.mid) for message in batched)
        queue_packet(_PUBACK_HEADER, pubacks, 0, 1)  # (command, bytes, mid, qos) as paho's own acks

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
        self.subscribed.clear()
        mids = set()
        for topic_filter, qos, _handler in self._handlers:
            result, mid = client.subscribe(topic_filter, qos=qos)
            if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
                mids.add(mid)
        with self._lock:
            self._pending_subscriptions = mids
        if not mids:
            self.subscribed.set()

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
        route = self._route(topic)
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
        topic_filter, handler = route
        try:
            handler(incoming)
        except Exception:  # a handler bug must not kill the network thread
            log.exception("handler for %s failed on %s", topic_filter, topic)

    def _route(self, topic: str) -> tuple[str, Handler] | None:
        """The first handler whose filter matches, memoised per topic.

        Matching a filter costs paho a fresh matcher object per call, a fifth of
        the receive path at thousands of messages per second; a fleet has few
        distinct topics. The memo is bounded so hostile topic names cannot grow it.
        """
        routes = self._routes
        try:
            return routes[topic]
        except KeyError:
            pass
        candidates = [(f, handler) for f, _qos, handler in self._handlers] + self._routed_only
        route = next(((f, handler) for f, handler in candidates if topic_matches(f, topic)), None)
        if len(routes) >= _MAX_MEMOISED_ROUTES:
            routes.clear()
        routes[topic] = route
        return route

    def _handle_publish(self, client, userdata, mid: int, reason_code: ReasonCode, properties) -> None:
        reason = None if not reason_code.is_failure else f"broker rejected publish: {reason_code}"
        self._complete(mid, reason)

    def _handle_unsubscribe(self, client, userdata, mid: int, reason_codes: list[ReasonCode], properties) -> None:
        failures = [str(code) for code in reason_codes if code.is_failure]
        self._complete(mid, f"broker refused to unsubscribe: {', '.join(failures)}" if failures else None)

    def _handle_subscribe(self, client, userdata, mid: int, reason_codes: list[ReasonCode], properties) -> None:
        failures = [str(code) for code in reason_codes if code.is_failure]
        self._complete(mid, f"broker refused subscription: {', '.join(failures)}" if failures else None)

    def _complete(self, mid: int, reason: str | None) -> None:
        # Publishes and subscriptions share paho's mid counter, so one map serves both.
        with self._lock:
            if mid in self._pending_subscriptions:
                self._pending_subscriptions.discard(mid)
                if not self._pending_subscriptions:
                    self.subscribed.set()
                    log.info("subscriptions active: %s", ", ".join(f for f, _q, _h in self._handlers))
                return
            delivery = self._deliveries.pop(mid, None)
            if delivery is None:
                self._early_acks[mid] = reason
                return
        delivery._complete(reason)

    def _notify(self, connected: bool, reason: str) -> None:
        if self._on_connection_change is not None:
            try:
                self._on_connection_change(connected, reason)
            except Exception:
                log.exception("connection-change callback failed")
