"""Availability, reconnects and persistent sessions against a real broker that restarts."""

from __future__ import annotations

from comms.mqtt import Availability
from contract.topics import Channel
from contract.messages import STATUS_OFFLINE, STATUS_ONLINE, STATUS_STOPPED
from tests.comms_helpers import speedups_mode  # noqa: F401 (a fixture)
from tests.conftest import WAIT_S, Collector, subscribe_and_wait, wait_until


def statuses(collector: Collector, topic: str) -> list[bytes]:
    return collector.payloads(topic)


def test_availability_online_then_stopped_on_clean_stop(mqtt_client, topics):
    watcher = subscribe_and_wait(mqtt_client("monitor"), topics.status("cam-a"))
    device = mqtt_client("cam-a", availability=Availability(topics.status("cam-a")))
    assert watcher.wait_for(lambda _: statuses(watcher, topics.status("cam-a")) == [STATUS_ONLINE.encode()])
    device.stop()
    assert watcher.wait_for(lambda _: statuses(watcher, topics.status("cam-a"))[-1:] == [STATUS_STOPPED.encode()])


def test_will_publishes_offline_when_the_device_dies(mqtt_client, topics):
    watcher = subscribe_and_wait(mqtt_client("monitor"), topics.status("cam-a"))
    device = mqtt_client("cam-a", availability=Availability(topics.status("cam-a")), keepalive_s=5)
    assert watcher.wait_for(lambda _: STATUS_ONLINE.encode() in statuses(watcher, topics.status("cam-a")))
    device._client.socket().close()  # vanish without DISCONNECT, like a pulled cable
    assert watcher.wait_for(lambda _: STATUS_OFFLINE.encode() in statuses(watcher, topics.status("cam-a")), WAIT_S)


def test_retained_status_reaches_late_subscribers(mqtt_client, topics):
    device = mqtt_client("cam-a", availability=Availability(topics.status("cam-a")))
    assert device.publish(topics.stats("cam-a"), b"{}", qos=1).wait(WAIT_S)  # after 'online' in order
    late = subscribe_and_wait(mqtt_client("monitor"), topics.status("cam-a"))
    assert late.wait_for(lambda messages: [(m.payload, m.retain) for m in messages] == [(b"online", True)])


def test_client_reconnects_after_broker_restart(broker, mqtt_client, topics):
    watcher_client = mqtt_client("monitor")
    watcher = subscribe_and_wait(watcher_client, topics.status("cam-a"))
    device = mqtt_client("cam-a", availability=Availability(topics.status("cam-a")))
    assert watcher.wait_for(lambda _: statuses(watcher, topics.status("cam-a")) == [b"online"])

    broker.restart()

    # The broker sends the device's will as it shuts down; then the device comes back.
    assert watcher.wait_for(lambda _: statuses(watcher, topics.status("cam-a"))[-2:] == [b"offline", b"online"], WAIT_S * 2)
    assert device.wait_connected(WAIT_S) and device.connect_count == 2
    assert watcher_client.connect_count == 2
    results = subscribe_and_wait(watcher_client, topics.result("cam-a"))
    assert device.publish(topics.result("cam-a"), b"after-restart", qos=1).wait(WAIT_S)
    assert results.wait_for(lambda messages: [m.payload for m in messages] == [b"after-restart"])


def test_qos1_published_while_offline_is_delivered_after_reconnect(broker, mqtt_client, topics):
    consumer_client = mqtt_client("ingest", client_id="ingest-session", clean_start=False, session_expiry_s=300)
    consumer = subscribe_and_wait(consumer_client, topics.all_devices(Channel.RESULT))
    device = mqtt_client("cam-a")
    broker.stop()
    assert wait_until(lambda: not device.connected)
    pending = [device.publish(topics.result("cam-a"), f"offline-{index}".encode(), qos=1) for index in range(5)]
    assert not any(delivery.done for delivery in pending)
    broker.start()
    assert all(delivery.wait(WAIT_S * 2) and delivery.acknowledged for delivery in pending)
    expected = [f"offline-{index}".encode() for index in range(5)]
    assert consumer.wait_for(lambda messages: [m.payload for m in messages] == expected, WAIT_S * 2)


def test_persistent_session_receives_what_was_published_while_away(mqtt_client, topics):
    session = dict(client_id="ingest-persistent", clean_start=False, session_expiry_s=300)
    first = mqtt_client("ingest", **session)
    subscribe_and_wait(first, topics.result("cam-a"))
    first.stop(announce_stopped=False)
    device = mqtt_client("cam-a")
    assert device.publish(topics.result("cam-a"), b"while-away", qos=1).wait(WAIT_S)
    collector = Collector()
    second = mqtt_client("ingest", start=False, **session)
    second.subscribe(topics.result("cam-a"), collector)  # routes the queued message on arrival
    second.start()
    assert collector.wait_for(lambda messages: [m.payload for m in messages] == [b"while-away"])


def test_manual_acks_in_one_write_stop_redelivery_and_unacked_come_back(speedups_mode, mqtt_client, topics):
    """ack_all() acknowledges a batch (its PUBACKs in one write with comms.speedups, one by one without):
    acked messages never return, unacked ones do."""
    session = dict(client_id="ingest-acks", clean_start=False, session_expiry_s=300)
    first = mqtt_client("ingest", manual_ack=True, **session)
    first_inbox = subscribe_and_wait(first, topics.result("cam-a"))
    device = mqtt_client("cam-a")
    payloads = [f"m{index}".encode() for index in range(30)]
    assert all(device.publish(topics.result("cam-a"), payload, qos=1).wait(WAIT_S) for payload in payloads)
    received = first_inbox.wait_count(len(payloads))
    first.ack_all(received[:20])
    first.stop(announce_stopped=False)  # DISCONNECT goes out after the queued PUBACKs, on the same connection

    second_inbox = Collector()
    second = mqtt_client("ingest", start=False, manual_ack=True, **session)
    second.subscribe(topics.result("cam-a"), second_inbox)
    second.start()
    redelivered = second_inbox.wait_count(10)
    assert sorted(message.payload for message in redelivered) == sorted(payloads[20:])
    second.ack_all(redelivered)
    assert not second_inbox.wait_for(lambda messages: len(messages) > 10, timeout=0.5), "an acked message came back"
