"""Home Assistant MQTT discovery for one edge device: pure functions, no MQTT client.

Home Assistant creates entities from retained JSON "config" messages under its
discovery prefix. For a device this module builds three of them, all tied to
one Home Assistant device:

- ``sensor``: the dominant emotion of the top (largest) face, from the result
  topic, with the top face's seven probabilities as attributes;
- ``binary_sensor``: connectivity, from the retained status topic;
- ``camera``: the annotated frame (the frame topic already carries base64 JPEG
  text, which Home Assistant decodes with ``image_encoding: b64``).

Topics: ``<discovery_prefix>/<component>/<device_id>/<object_id>/config``.
The device id is the optional ``node_id`` level, so a broker ACL can let each
device write only its own discovery topics with one line::

    topic write homeassistant/+/<device_id>/+/config

The caller publishes each :class:`DiscoveryMessage` retained (QoS 1), e.g. on
every (re)connect; an empty retained payload on the same topics removes the
entities (:func:`removal_topics`).
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from typing import Any, NamedTuple

from contract.emotions import EMOTIONS
from contract.topics import HOMEASSISTANT_DISCOVERY_PREFIX, Topics, check_device_id

DEFAULT_DISCOVERY_PREFIX = HOMEASSISTANT_DISCOVERY_PREFIX
PACKAGE_NAME = "emotion-mqtt"
MANUFACTURER = "emotion-mqtt"
DEFAULT_MODEL = "Edge agent (Haar + Mini-Xception)"

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
NO_FACE_STATE = "none"

SENSOR_OBJECT_ID = "emotion"
CONNECTIVITY_OBJECT_ID = "connectivity"
CAMERA_OBJECT_ID = "frame"

# Home Assistant's own rule for node and object ids (its discovery docs).
_DISCOVERY_ID_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
_DISCOVERY_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$")

# The status topic carries online / offline (LWT) / stopped (clean shutdown).
# Home Assistant compares the rendered value with payload_on/off and
# payload_available/not_available; mapping everything but "online" to
# "offline" makes a cleanly stopped device look offline, not stale-online.
STATUS_TEMPLATE = "{{ 'online' if value == 'online' else 'offline' }}"

# Dominant emotion: the legacy top-face field; heartbeats (no face) carry null.
EMOTION_TEMPLATE = "{{ value_json.emotion_text if value_json.emotion_text is not none else 'none' }}"

# The top face is the largest box (contract.messages.top_face); the first of
# equal boxes wins there too, hence the strict ">". Only core Jinja features,
# so the template renders the same in Home Assistant and in our tests.
TOP_FACE_ATTRIBUTES_TEMPLATE = (
    "{% set top = namespace(face=none, area=-1) %}"
    "{% for face in value_json.faces %}"
    "{% if face.box.w * face.box.h > top.area %}"
    "{% set top.face = face %}{% set top.area = face.box.w * face.box.h %}"
    "{% endif %}"
    "{% endfor %}"
    "{{ dict(top.face.probabilities if top.face is not none else {}, face_count=value_json.faces | length) | tojson }}"
)


class DiscoveryMessage(NamedTuple):
    """One retained discovery config: where it goes and what it says."""

    topic: str
    payload: dict[str, Any]

    def payload_bytes(self) -> bytes:
        # allow_nan=False: Home Assistant parses with a strict JSON parser.
        return json.dumps(self.payload, separators=(",", ":"), allow_nan=False, sort_keys=True).encode()


def package_version() -> str:
    """The installed emotion-mqtt version, shown as the device's software version."""
    try:
        return metadata.version(PACKAGE_NAME)
    except metadata.PackageNotFoundError:
        return "unknown"


def check_discovery_prefix(prefix: str) -> str:
    if not _DISCOVERY_PREFIX_RE.fullmatch(prefix or ""):
        raise ValueError(f"invalid discovery prefix {prefix!r}: 1-4 levels of A-Z a-z 0-9 _ -")
    return prefix


def discovery_topic(discovery_prefix: str, component: str, device_id: str, object_id: str) -> str:
    """``<prefix>/<component>/<device_id>/<object_id>/config``."""
    for part in (component, device_id, object_id):
        if not _DISCOVERY_ID_RE.fullmatch(part):
            raise ValueError(f"{part!r} is not a valid discovery topic level")
    return f"{check_discovery_prefix(discovery_prefix)}/{component}/{device_id}/{object_id}/config"


def device_acl_rule(device_id: str, discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX) -> str:
    """The Mosquitto ACL line that lets ``device_id`` publish (and remove) its own discovery configs."""
    return f"topic write {check_discovery_prefix(discovery_prefix)}/+/{check_device_id(device_id)}/+/config"


def unique_id(device_id: str, object_id: str) -> str:
    return f"emq_{device_id}_{object_id}"


def device_block(device_id: str, *, name: str | None = None, model: str = DEFAULT_MODEL, software_version: str | None = None) -> dict[str, Any]:
    """The Home Assistant device all three entities belong to."""
    return {
        "identifiers": [f"emotion-mqtt:{device_id}"],
        "name": name or device_id,
        "manufacturer": MANUFACTURER,
        "model": model,
        "sw_version": software_version or package_version(),
    }


def origin_block(software_version: str | None = None) -> dict[str, Any]:
    # Home Assistant logs the origin of every discovered item; it recommends sending it.
    return {"name": PACKAGE_NAME, "sw_version": software_version or package_version()}


def availability_options(topics: Topics, device_id: str) -> dict[str, Any]:
    return {
        "availability_topic": topics.status(device_id),
        "availability_template": STATUS_TEMPLATE,
        "payload_available": STATUS_ONLINE,
        "payload_not_available": STATUS_OFFLINE,
    }


def emotion_sensor_config(topics: Topics, device_id: str) -> dict[str, Any]:
    """Dominant emotion of the top face; the top face's probabilities as attributes."""
    result_topic = topics.result(device_id)
    return {
        "name": "Emotion",
        "unique_id": unique_id(device_id, SENSOR_OBJECT_ID),
        "state_topic": result_topic,
        "value_template": EMOTION_TEMPLATE,
        "json_attributes_topic": result_topic,
        "json_attributes_template": TOP_FACE_ATTRIBUTES_TEMPLATE,
        "device_class": "enum",
        "options": [*EMOTIONS, NO_FACE_STATE],
        "icon": "mdi:emoticon-outline",
        "qos": 1,
        **availability_options(topics, device_id),
    }


def connectivity_sensor_config(topics: Topics, device_id: str) -> dict[str, Any]:
    """Connected / disconnected from the status topic.

    Deliberately without availability: an entity fed by the same topic as its
    availability would turn "unavailable" exactly when it should show
    "disconnected", so the off state could never be seen.
    """
    return {
        "name": "Connectivity",
        "unique_id": unique_id(device_id, CONNECTIVITY_OBJECT_ID),
        "state_topic": topics.status(device_id),
        "value_template": STATUS_TEMPLATE,
        "payload_on": STATUS_ONLINE,
        "payload_off": STATUS_OFFLINE,
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "qos": 1,
    }


def camera_config(topics: Topics, device_id: str) -> dict[str, Any]:
    """The annotated frame; frames are base64 JPEG text on the wire already."""
    return {
        "name": "Annotated frame",
        "unique_id": unique_id(device_id, CAMERA_OBJECT_ID),
        "topic": topics.frame(device_id),
        "image_encoding": "b64",
        **availability_options(topics, device_id),
    }


ENTITIES = (
    ("sensor", SENSOR_OBJECT_ID, emotion_sensor_config),
    ("binary_sensor", CONNECTIVITY_OBJECT_ID, connectivity_sensor_config),
    ("camera", CAMERA_OBJECT_ID, camera_config),
)


def discovery_messages(
    device_id: str,
    topics: Topics | None = None,
    *,
    discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX,
    device_name: str | None = None,
    model: str = DEFAULT_MODEL,
    software_version: str | None = None,
) -> list[DiscoveryMessage]:
    """The retained discovery configs of ``device_id``: sensor, binary_sensor, camera."""
    check_device_id(device_id)
    topics = topics or Topics()
    version = software_version or package_version()
    shared = {
        "device": device_block(device_id, name=device_name, model=model, software_version=version),
        "origin": origin_block(version),
    }
    return [
        DiscoveryMessage(discovery_topic(discovery_prefix, component, device_id, object_id), {**build(topics, device_id), **shared})
        for component, object_id, build in ENTITIES
    ]


def removal_topics(device_id: str, *, discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX) -> list[str]:
    """Publish an empty retained payload on each to remove the device's entities."""
    check_device_id(device_id)
    return [discovery_topic(discovery_prefix, component, device_id, object_id) for component, object_id, _build in ENTITIES]
