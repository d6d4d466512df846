"""Ship a model to the edges over MQTT: the TFLite bytes and a manifest, both retained.

Only the ``retrain`` identity may write these topics (broker ACL). The blob
goes first and the manifest second, so an edge that sees a manifest finds
its bytes already there (retained) — and an edge that connects later gets
both at once. Edges check the sha256 before installing (edge.model_updates).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from comms.transport import Transport
from contract.messages import ModelRelease, utc_millis
from contract.topics import Topics
from runtime.registry import ModelEntry, ModelRegistry

ACK_TIMEOUT_S = 30.0


class ReleaseError(RuntimeError):
    pass


def manifest_for(entry: ModelEntry, blob: bytes) -> ModelRelease:
    metrics = {key: float(value) for key, value in entry.metrics.items() if isinstance(value, (int, float))}
    return ModelRelease(
        name=entry.name, version=entry.version, parent=entry.parent, sha256=hashlib.sha256(blob).hexdigest(),
        size=len(blob), created_at=utc_millis(entry.created_at), metrics=metrics,
    )


def release_files(registry: ModelRegistry, version: str) -> tuple[ModelRelease, bytes]:
    entry = registry.get(version)
    registry.verify(entry)
    blob = Path(registry.path_of(entry, "tflite")).read_bytes()
    return manifest_for(entry, blob), blob


def publish_release(client: Transport, topics: Topics, manifest: ModelRelease, blob: bytes, device_id: str | None = None) -> None:
    """Publish blob then manifest (QoS 1, retained) to the fleet, or to one device; wait for the broker's acks."""
    blob_topic = topics.device_model_blob(device_id) if device_id else topics.model_blob
    release_topic = topics.device_model_release(device_id) if device_id else topics.model_release
    for topic, payload in ((blob_topic, blob), (release_topic, manifest.to_json())):
        delivery = client.publish(topic, payload, qos=1, retain=True)
        if not delivery.wait(ACK_TIMEOUT_S) or not delivery.acknowledged:
            raise ReleaseError(f"broker did not accept {topic}: {delivery.reason or 'timeout'}")
