"""ACLs: each identity reaches only its own topics.

Absence is proven without sleeping: after a forbidden publish the same
publisher sends an allowed *sentinel*. MQTT keeps one publisher's messages in
order, so once the sentinel has arrived the forbidden one would have too.
"""

from __future__ import annotations

import pytest

from contract.topics import Channel
from tests.conftest import WAIT_S, Collector, subscribe_and_wait


@pytest.fixture
def spy(mqtt_client, topics):
    """The monitor identity, subscribed to everything under the prefix."""
    return subscribe_and_wait(mqtt_client("monitor-2"), topics.everything)


def publish_then_sentinel(client, forbidden_topic: str, sentinel_topic: str, spy: Collector) -> str | None:
    denied = client.publish(forbidden_topic, b"forbidden", qos=1)
    assert denied.wait(WAIT_S), "no PUBACK for the forbidden publish"
    sentinel = client.publish(sentinel_topic, b"sentinel", qos=1)
    assert sentinel.wait(WAIT_S) and sentinel.acknowledged
    assert spy.wait_for(lambda messages: any(m.payload == b"sentinel" for m in messages))
    return denied.reason


def test_device_publishes_under_its_own_topics(mqtt_client, topics, spy):
    device = mqtt_client("cam-a")
    for channel in (Channel.RESULT, Channel.STATS, Channel.COMMAND_REPLY):
        delivery = device.publish(topics.device("cam-a", channel), b"ok", qos=1)
        assert delivery.wait(WAIT_S) and delivery.acknowledged, delivery.reason
    assert spy.wait_for(lambda messages: len([m for m in messages if m.payload == b"ok"]) == 3)


def test_device_cannot_publish_as_another_device(mqtt_client, topics, spy):
    device_a = mqtt_client("cam-a")
    reason = publish_then_sentinel(device_a, topics.result("cam-b"), topics.result("cam-a"), spy)
    assert reason and "authori" in reason.lower()
    assert not spy.on(topics.result("cam-b"))


def test_device_cannot_publish_commands_or_models(mqtt_client, topics, spy):
    device_a = mqtt_client("cam-a")
    for forbidden in (topics.command("cam-b"), topics.command("cam-a"), topics.model_release, topics.device_model_release("cam-a")):
        publish_then_sentinel(device_a, forbidden, topics.stats("cam-a"), spy)
        assert not spy.on(forbidden), forbidden


def test_monitor_cannot_publish(mqtt_client, topics, spy):
    monitor = mqtt_client("monitor")
    device = mqtt_client("cam-a")
    for forbidden in (topics.result("cam-a"), topics.command("cam-a"), topics.model_release, "monitor/anything"):
        denied = monitor.publish(forbidden, b"forbidden", qos=1)
        assert denied.wait(WAIT_S) and denied.reason is not None, forbidden
    # Mosquitto routes a publish before it sends the PUBACK, so by now any
    # forbidden message that had been routed would already be in the spy.
    sentinel = device.publish(topics.result("cam-a"), b"sentinel", qos=1)
    assert sentinel.wait(WAIT_S)
    assert spy.wait_for(lambda messages: any(m.payload == b"sentinel" for m in messages))
    assert not [m for m in spy.messages if m.payload == b"forbidden"]


def test_device_reads_only_its_own_commands(mqtt_client, topics):
    device_a = mqtt_client("cam-a")
    stolen = subscribe_and_wait(device_a, topics.command("cam-b"))
    own = subscribe_and_wait(device_a, topics.command("cam-a"))
    webui = mqtt_client("webui")
    assert webui.publish(topics.command("cam-b"), b"for-b", qos=1).wait(WAIT_S)
    assert webui.publish(topics.command("cam-a"), b"for-a", qos=1).wait(WAIT_S)
    assert own.wait_for(lambda messages: [m.payload for m in messages] == [b"for-a"])
    assert stolen.messages == []


def test_device_cannot_read_other_devices_data(mqtt_client, topics):
    device_a = mqtt_client("cam-a")
    wildcard = subscribe_and_wait(device_a, f"{topics.prefix}/#")
    device_b = mqtt_client("cam-b")
    assert device_b.publish(topics.result("cam-b"), b"b-result", qos=1).wait(WAIT_S)
    webui = mqtt_client("webui")
    assert webui.publish(topics.command("cam-a"), b"barrier", qos=1).wait(WAIT_S)
    assert wildcard.wait_for(lambda messages: any(m.payload == b"barrier" for m in messages))
    assert not [m for m in wildcard.messages if m.payload == b"b-result"]


def test_webui_publishes_only_commands(mqtt_client, topics, spy):
    webui = mqtt_client("webui")
    allowed = webui.publish(topics.command("cam-a"), b"cmd", qos=1)
    assert allowed.wait(WAIT_S) and allowed.acknowledged
    reason = publish_then_sentinel(webui, topics.result("cam-a"), topics.command("cam-b"), spy)
    assert reason is not None
    assert not spy.on(topics.result("cam-a"))


def test_only_retrain_publishes_model_releases(mqtt_client, topics, spy):
    for identity in ("cam-a", "webui", "ingest"):
        client = mqtt_client(identity)
        denied = client.publish(topics.model_release, b"fake-release", qos=1)
        assert denied.wait(WAIT_S) and denied.reason is not None, identity
    retrain = mqtt_client("retrain")
    release = retrain.publish(topics.model_release, b"real-release", qos=1)
    assert release.wait(WAIT_S) and release.acknowledged
    assert spy.wait_for(lambda messages: any(m.payload == b"real-release" for m in messages))
    assert [m.payload for m in spy.on(topics.model_release)] == [b"real-release"]


def test_devices_read_fleet_model_releases(mqtt_client, topics):
    device = mqtt_client("cam-a")
    releases = subscribe_and_wait(device, f"{topics.prefix}/models/#")
    targeted = subscribe_and_wait(device, topics.device_model_release("cam-a"))
    retrain = mqtt_client("retrain")
    assert retrain.publish(topics.model_release, b"fleet", qos=1).wait(WAIT_S)
    assert retrain.publish(topics.device_model_release("cam-a"), b"just-a", qos=1).wait(WAIT_S)
    assert releases.wait_for(lambda messages: [m.payload for m in messages] == [b"fleet"])
    assert targeted.wait_for(lambda messages: [m.payload for m in messages] == [b"just-a"])


def test_ingest_reads_every_device(mqtt_client, topics):
    ingest = mqtt_client("ingest")
    everything = subscribe_and_wait(ingest, topics.all_devices(Channel.RESULT))
    for device_id in ("cam-a", "cam-b"):
        assert mqtt_client(device_id).publish(topics.result(device_id), device_id.encode(), qos=1).wait(WAIT_S)
    assert everything.wait_for(lambda messages: sorted(m.payload for m in messages) == [b"cam-a", b"cam-b"])
