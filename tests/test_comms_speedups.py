"""The opt-in paho speed-ups: on where tested, refused (with a WARNING) elsewhere, never applied by an import.

Without a broker: the PUBACK bytes are caught at paho's packet queue, the
one place both paho's own ``ack()`` and the batched path hand them to.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import paho.mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from comms import speedups
from comms.mqtt import MqttClient
from comms.settings import MqttSettings
from comms.transport import Message, Transport
from contract.messages import FRAME_CONTENT_TYPE
from tests.conftest import REPO_ROOT

PAHO_INIT, PAHO_CLEAR = Properties.__init__, Properties.clear


@pytest.fixture
def paho_as_shipped():
    """Each test starts, and leaves the process, with paho's own code."""
    speedups.disable()
    yield
    speedups.disable()


def test_enabled_on_the_installed_paho(paho_as_shipped, caplog):
    with caplog.at_level(logging.INFO, logger="comms.speedups"):
        assert speedups.enable() and speedups.enabled()
    assert speedups.enable()  # again: nothing more happens
    assert Properties(PacketTypes.CONNECT).names is Properties(PacketTypes.PUBLISH).names  # one shared table
    assert f"paho-mqtt {paho.mqtt.__version__} speed-ups on" in caplog.text
    speedups.disable()
    assert (Properties.__init__, Properties.clear) == (PAHO_INIT, PAHO_CLEAR) and not speedups.enabled()


def test_shared_property_tables_pack_and_unpack_like_paho(paho_as_shipped):
    shipped = _round_trip()
    assert speedups.enable()
    assert _round_trip() == shipped
    received = Properties(PacketTypes.PUBLISH)
    received.ContentType = FRAME_CONTENT_TYPE
    received.clear()
    assert not hasattr(received, "ContentType") and received.pack() == b"\x00"
    with pytest.raises(Exception):
        Properties(PacketTypes.CONNACK).ContentType = "x"  # paho's own checks still apply


def _round_trip() -> tuple[bytes, list, str, int]:
    sent = Properties(PacketTypes.PUBLISH)
    sent.UserProperty = [("frame_number", "7"), ("captured_at", "2026-11-22T03:47:13.123Z")]
    sent.ContentType = FRAME_CONTENT_TYPE
    sent.MessageExpiryInterval = 60
    received = Properties(PacketTypes.PUBLISH)
    received.unpack(sent.pack())
    return sent.pack(), received.UserProperty, received.ContentType, received.MessageExpiryInterval


@pytest.mark.parametrize("version", ["3.0.0", "2.0.0", "2.3.1", "2.x", "unknown"])
def test_refused_on_a_paho_they_were_not_tested_with(paho_as_shipped, monkeypatch, caplog, version):
    monkeypatch.setattr(paho.mqtt, "__version__", version)
    with caplog.at_level(logging.WARNING, logger="comms.speedups"):
        assert not speedups.enable()
    assert not speedups.enabled()
    assert (Properties.__init__, Properties.clear) == (PAHO_INIT, PAHO_CLEAR)
    warning = next(record for record in caplog.records if record.levelno == logging.WARNING)
    assert f"paho-mqtt {version} is outside the versions they were tested with" in warning.getMessage()
    assert "message by message" in warning.getMessage()


def test_refused_when_paho_properties_changed_layout(paho_as_shipped, monkeypatch, caplog):
    def extra_field(self, packetType):
        PAHO_INIT(self, packetType)
        object.__setattr__(self, "cache", {})  # past paho's own attribute check

    monkeypatch.setattr(speedups, "_paho_own", {"__init__": extra_field, "clear": PAHO_CLEAR})
    with caplog.at_level(logging.WARNING, logger="comms.speedups"):
        assert not speedups.enable()
    assert "Properties holds" in caplog.text and Properties.__init__ is PAHO_INIT


def packets_of_ack_all(messages: list[Message]) -> list[tuple[int, bytes]]:
    """What ``ack_all`` hands to paho's packet queue: (command, bytes) per packet, without a broker."""
    client = MqttClient(MqttSettings(client_id="ingest-test"), manual_ack=True)
    queued: list[tuple[int, bytes]] = []
    client._client._packet_queue = lambda command, packet, mid, qos, info=None: queued.append((command, bytes(packet)))
    client.ack_all(messages)
    return queued


BATCH = [Message(topic="t", payload=b"", qos=qos, retain=False, mid=mid) for mid, qos in
         [(1, 1), (2, 1), (300, 1), (65535, 1), (77, 2), (88, 0)]]


def test_ack_all_sends_the_same_bytes_batched_or_not(paho_as_shipped):
    one_by_one = packets_of_ack_all(BATCH)  # paho's own ack(), one packet per message
    assert [command for command, _ in one_by_one] == [0x70, 0x40, 0x40, 0x40, 0x40]  # a PUBCOMP, 4 PUBACKs, none for QoS 0
    assert speedups.enable()
    batched = packets_of_ack_all(BATCH)
    assert len(batched) == 2, "the PUBACKs did not go out as one write"
    pubcomp, pubacks = batched
    assert pubcomp == one_by_one[0]
    assert pubacks == (0x40, b"".join(packet for _, packet in one_by_one[1:]))


def test_ack_all_without_manual_ack_sends_nothing(paho_as_shipped):
    assert speedups.enable()
    client = MqttClient(MqttSettings(client_id="auto-ack"))
    queued = []
    client._client._packet_queue = lambda *args, **kwargs: queued.append(args)
    client.ack_all(BATCH)  # paho acknowledged these on arrival: a second PUBACK would be a protocol error
    assert queued == []


def test_the_paho_client_is_a_transport():
    assert isinstance(MqttClient(MqttSettings(client_id="t")), Transport)


def test_importing_comms_and_the_components_does_not_patch_paho():
    """A fresh interpreter imports every component that talks MQTT; paho stays as shipped."""
    script = (
        "import comms.mqtt, comms.speedups, comms.routing, comms.deliveries, comms.tls, comms.transport\n"
        "import edge.assembly, edge.forwarder, edge.cli, cloud.ingest, cloud.cli, webui.broker, models.release\n"
        "from paho.mqtt.properties import Properties\n"
        "assert Properties.__init__.__module__ == 'paho.mqtt.properties', Properties.__init__\n"
        "assert Properties.clear.__module__ == 'paho.mqtt.properties', Properties.clear\n"
        "assert not comms.speedups.enabled()\n"
        "print('paho as shipped')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "paho as shipped" in run.stdout, run.stdout + run.stderr


def test_the_ingest_enables_them_at_start_up(paho_as_shipped, monkeypatch):
    import cloud.cli

    seen = []

    class Service:
        def __init__(self, config, stop_event) -> None:
            pass

        def run(self) -> None:
            seen.append(speedups.enabled())

    monkeypatch.setattr(cloud.cli, "load_or_exit", lambda *args, **kwargs: object())
    monkeypatch.setattr(cloud.cli, "IngestService", Service)
    monkeypatch.setattr(cloud.cli, "stop_on_signals", lambda name: None)
    assert cloud.cli.main([]) == 0
    assert seen == [True]
