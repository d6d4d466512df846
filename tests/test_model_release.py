"""Model releases over MQTT into a running edge agent: install, refuse a bad checksum, roll back, survive a restart."""

from __future__ import annotations

import signal

from contract.messages import ModelRelease
from contract.validation import parse_reply, parse_result, parse_stats
from runtime.registry import ModelRegistry
from models.release import manifest_for, publish_release
from tests.conftest import WAIT_S, media_file, subscribe_and_wait
from tests.edge_helpers import agent_env, start_agent

RELEASE_WAIT_S = 20.0


def pretrained_blob() -> tuple[bytes, object]:
    registry = ModelRegistry()
    entry = registry.current()
    return registry.path_of(entry, "tflite").read_bytes(), entry


def release_as(version: str, blob: bytes, entry, sha256: str | None = None) -> ModelRelease:
    manifest = manifest_for(entry, blob).model_copy(update={"version": version, "parent": entry.version})
    return manifest.model_copy(update={"sha256": sha256}) if sha256 else manifest


def versions_seen(collector) -> list[str]:
    return [parse_result(message.payload).model.version for message in collector.messages]


def test_release_is_installed_refused_rolled_back_and_kept_over_restarts(broker, pki_dir, tmp_path, mqtt_client, topics, spawned):
    blob, entry = pretrained_blob()
    monitor = mqtt_client("monitor")
    results = subscribe_and_wait(monitor, topics.result("cam-a"))
    stats = subscribe_and_wait(monitor, topics.stats("cam-a"))
    env = agent_env(pki_dir, broker.settings.tls_port, tmp_path / "edge")
    agent = start_agent(env, tmp_path / "agent.log", "--source", str(media_file("woman2.mp4")), "--loop", "--pace")
    spawned.append(agent)
    assert results.wait_for(lambda messages: len(messages) > 5, RELEASE_WAIT_S), (tmp_path / "agent.log").read_text()
    assert versions_seen(results)[-1] == entry.version

    retrain = mqtt_client("retrain")
    publish_release(retrain, topics, release_as("1.1.0", blob, entry), blob)
    assert results.wait_for(lambda _: versions_seen(results)[-1] == "1.1.0", RELEASE_WAIT_S), (tmp_path / "agent.log").read_text()[-2000:]

    # A manifest whose checksum does not match its bytes: refused, the agent keeps 1.1.0 and says why.
    publish_release(retrain, topics, release_as("1.2.0", blob, entry, sha256="0" * 64), blob)
    assert stats.wait_for(lambda messages: bool(messages) and "1.2.0 refused" in (parse_stats(messages[-1].payload).model_error or ""), RELEASE_WAIT_S)
    assert "1.2.0" not in versions_seen(results) and versions_seen(results)[-1] == "1.1.0"

    webui = mqtt_client("webui")
    replies = subscribe_and_wait(webui, topics.command_reply("cam-a"))
    assert webui.publish(topics.command("cam-a"), b'{"schema": "emotion.command/1", "id": "rb", "command": "rollback_model"}', qos=1).wait(WAIT_S)
    assert replies.wait_for(lambda messages: len(messages) == 1)
    reply = parse_reply(replies.messages[0].payload)
    assert reply.ok and reply.result == {"model_version": entry.version}
    count = len(results.messages)
    assert results.wait_for(lambda messages: len(messages) > count + 5 and versions_seen(results)[-1] == entry.version, RELEASE_WAIT_S)

    # Restart: the rolled-back release stays blocked although it is still retained on the broker.
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(WAIT_S * 2) == 0
    count = len(results.messages)
    spawned.append(start_agent(env, tmp_path / "agent.log", "--source", str(media_file("woman2.mp4")), "--loop", "--pace"))
    assert results.wait_for(lambda messages: len(messages) > count + 20, RELEASE_WAIT_S)
    assert set(versions_seen(results)[count:]) == {entry.version}

    # The device keeps its models in the same store format as the build machine (runtime.registry).
    device_store = ModelRegistry(tmp_path / "edge" / "cam-a" / "models")
    assert device_store.current().version == entry.version and device_store.previous().version == "1.1.0"
    assert ("1.1.0", manifest_for(entry, blob).sha256) in device_store.blocked()
    for version in device_store.versions():
        device_store.verify(device_store.get(version))


def test_a_device_cannot_publish_a_release(mqtt_client, topics):
    blob, entry = pretrained_blob()
    device = mqtt_client("cam-a")
    delivery = device.publish(topics.model_release, release_as("9.9.9", blob, entry).to_json(), qos=1, retain=True)
    assert delivery.wait(WAIT_S) and delivery.reason is not None
    watcher = subscribe_and_wait(mqtt_client("monitor"), f"{topics.prefix}/models/#")
    # Retained messages are sent on subscription, before any later live message: use one as a barrier.
    assert mqtt_client("retrain").publish(f"{topics.prefix}/models/barrier", b"live", qos=1).wait(WAIT_S)
    assert watcher.wait_for(lambda messages: any(m.payload == b"live" for m in messages))
    assert [m.payload for m in watcher.messages] == [b"live"]  # no retained release: the broker refused it
