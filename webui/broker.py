"""The dashboard's broker connection: one subscription feeding the live hub, one publisher for commands."""

from __future__ import annotations

import logging

from comms.deliveries import Delivery
from comms.mqtt import MqttClient
from comms.settings import MqttSettings
from comms.transport import Transport
from webui.live import LiveHub

log = logging.getLogger(__name__)


class BrokerLink:
    """Connects as the ``webui`` identity (reads every device topic, may publish only commands)."""

    def __init__(self, settings: MqttSettings, hub: LiveHub) -> None:
        self.hub = hub
        self.client: Transport = MqttClient(settings, on_connection_change=hub.set_broker_connected)
        for topic_filter in hub.subscriptions():
            # QoS 1 so results, statuses and replies are not lost on the way to us; frames come as QoS 0.
            self.client.subscribe(topic_filter, hub.handle, qos=1)

    def start(self) -> "BrokerLink":
        """Connect in the background (with retries): the pages work while the broker is away."""
        self.client.start()
        return self

    def stop(self) -> None:
        self.client.stop(announce_stopped=False, timeout=2)

    @property
    def connected(self) -> bool:
        return self.client.connected

    @property
    def last_error(self) -> str | None:
        return self.client.last_error

    def publish(self, *args, **kwargs) -> Delivery:
        return self.client.publish(*args, **kwargs)
