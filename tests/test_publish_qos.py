"""Publish flows: QoS 1 acknowledgements and order, QoS 0 while offline, sizes, properties."""

from __future__ import annotations

import pytest

from comms.mqtt import MqttError
from contract.messages import FRAME_CONTENT_TYPE
from contract.validation import FrameMeta
from tests.comms_helpers import speedups_mode  # noqa: F401 (a fixture)
from tests.conftest import WAIT_S, subscribe_and_wait, wait_until


def test_qos1_stream_arrives_complete_and_in_order(mqtt_client, topics):
    sink = subscribe_and_wait(mqtt_client("ingest"), topics.result("cam-a"))
    device = mqtt_client("cam-a")
    deliveries = [device.publish(topics.result("cam-a"), str(index).encode(), qos=1) for index in range(500)]
    assert all(delivery.wait(WAIT_S) and delivery.acknowledged for delivery in deliveries)
    assert sink.wait_for(lambda messages: len(messages) == 500)
    assert [int(message.payload) for message in sink.messages] == list(range(500))
    assert all(message.qos == 1 for message in sink.messages)


def test_frame_sized_payload_with_properties(mqtt_client, topics):
    sink = subscribe_and_wait(mqtt_client("ingest"), topics.frame("cam-a"))
    device = mqtt_client("cam-a")
    payload = b"A" * (1024 * 1024)
    meta = FrameMeta(frame_number=12, captured_at="2026-11-22T03:47:13.123Z", result_seq=4, result_msg_id="id-4")
    device.publish(topics.frame("cam-a"), payload, qos=0, user_properties=meta.to_properties(), content_type=FRAME_CONTENT_TYPE)
    assert sink.wait_for(lambda messages: len(messages) == 1)
    received = sink.messages[0]
    assert received.payload == payload
    assert received.content_type == FRAME_CONTENT_TYPE
    assert FrameMeta.from_properties(list(received.user_properties)) == meta


def test_oversized_publish_is_refused_and_the_client_carries_on(mqtt_client, topics, broker):
    sink = subscribe_and_wait(mqtt_client("ingest"), topics.result("cam-a"))
    device = mqtt_client("cam-a", max_packet_bytes=64 * 1024 * 1024)  # only the broker's CONNACK limit applies
    too_big = b"x" * (broker.settings.max_packet_size + 1)
    with pytest.raises(MqttError, match="packet limit"):
        device.publish(topics.result("cam-a"), too_big, qos=1)
    good = device.publish(topics.result("cam-a"), b"good", qos=1)
    assert good.wait(WAIT_S) and good.acknowledged
    assert sink.wait_for(lambda messages: [m.payload for m in messages] == [b"good"])
    assert device.connect_count == 1


def test_qos0_frames_are_dropped_while_offline(mqtt_client, topics, broker):
    device = mqtt_client("cam-a")
    broker.stop()
    assert wait_until(lambda: not device.connected)
    dropped = device.publish(topics.frame("cam-a"), b"frame", qos=0)
    assert dropped.done and not dropped.acknowledged
    assert "dropped" in dropped.reason


def test_properties_survive_and_never_leak_into_the_next_message(speedups_mode, mqtt_client, topics):
    """Every MQTT 5 property the project uses arrives intact; a message without properties gets none,
    with paho as shipped and with its Properties sharing their lookup tables (comms.speedups)."""
    sink = subscribe_and_wait(mqtt_client("ingest"), topics.frame("cam-a"))
    device = mqtt_client("cam-a")
    meta = FrameMeta(frame_number=7, captured_at="2026-11-22T03:47:13.123Z")
    for index in range(3):
        assert device.publish(topics.frame("cam-a"), b"with", qos=1, user_properties=meta.to_properties(),
                              content_type=FRAME_CONTENT_TYPE, expiry_s=60, response_topic="emotion/replies/x").wait(WAIT_S)
        assert device.publish(topics.frame("cam-a"), b"without", qos=1).wait(WAIT_S)
    assert sink.wait_for(lambda messages: len(messages) == 6)
    for message in sink.messages:
        if message.payload == b"with":
            assert FrameMeta.from_properties(list(message.user_properties)) == meta
            assert (message.content_type, message.response_topic) == (FRAME_CONTENT_TYPE, "emotion/replies/x")
        else:
            assert (message.user_properties, message.content_type, message.response_topic) == ((), None, None)
