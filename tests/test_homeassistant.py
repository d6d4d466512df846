"""Home Assistant MQTT discovery: payloads checked against HA's documented schema, templates
rendered against real results, and the retained configs published through the real broker.

The schema below encodes the keys Home Assistant documents for MQTT discovery
(integrations ``sensor.mqtt``, ``binary_sensor.mqtt``, ``camera.mqtt`` and the
discovery section of ``mqtt``): required keys, the allowed ones, and the value
rules we rely on. Home Assistant ignores unknown keys, so a typo would silently
do nothing; refusing unknown keys here catches it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from broker.acl import render_acl
from broker.identities import Identity, Role
from contract.emotions import EMOTIONS
from contract.messages import Result
from contract.topics import Topics
from edge.homeassistant import (
    DEFAULT_DISCOVERY_PREFIX,
    DiscoveryMessage,
    device_acl_rule,
    discovery_messages,
    removal_topics,
)
from tests.conftest import DEVICES, WAIT_S, Collector, subscribe_and_wait
from tests.factories import face, result

jinja2_sandbox = pytest.importorskip("jinja2.sandbox", reason="jinja2 (a Flask dependency, webui extra) renders the templates")
import jinja2  # after the importorskip above, which skips the module without it

DEVICE_ID = DEVICES[0]

# -- Home Assistant's documented discovery schema --------------------------------------------
AVAILABILITY_KEYS = {"availability", "availability_mode", "availability_template", "availability_topic", "payload_available", "payload_not_available"}
ENTITY_KEYS = AVAILABILITY_KEYS | {
    "device", "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id", "unique_id", "origin",
}
COMPONENT_SCHEMAS: dict[str, dict[str, set[str]]] = {
    "sensor": {
        "required": {"state_topic"},
        "allowed": ENTITY_KEYS | {
            "state_topic", "value_template", "device_class", "expire_after", "force_update", "last_reset_value_template",
            "options", "qos", "state_class", "suggested_display_precision", "unit_of_measurement",
        },
    },
    "binary_sensor": {
        "required": {"state_topic"},
        "allowed": ENTITY_KEYS | {
            "state_topic", "value_template", "device_class", "expire_after", "force_update", "off_delay",
            "payload_on", "payload_off", "qos",
        },
    },
    "camera": {"required": {"topic"}, "allowed": ENTITY_KEYS | {"topic", "image_encoding"}},
}
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id", "name",
    "serial_number", "suggested_area", "sw_version", "via_device",
}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
TEMPLATE_KEYS = {"value_template", "json_attributes_template", "availability_template"}
ENTITY_CATEGORIES = {"config", "diagnostic"}
DISCOVERY_ID = r"[a-zA-Z0-9_-]+"


def topic_keys(payload: dict[str, Any]) -> list[str]:
    return [key for key in payload if key.endswith("_topic") or key == "topic"]


def schema_problems(component: str, payload: dict[str, Any]) -> list[str]:
    """Every way ``payload`` breaks the documented schema of ``component`` (empty when valid)."""
    schema = COMPONENT_SCHEMAS[component]
    problems = [f"missing required key {key}" for key in sorted(schema["required"] - payload.keys())]
    problems += [f"undocumented key {key}" for key in sorted(payload.keys() - schema["allowed"])]
    problems += [f"{key} is not a publishable topic: {payload[key]!r}" for key in topic_keys(payload) if not is_topic_name(payload[key])]
    problems += [f"{key} is not a string" for key in TEMPLATE_KEYS & payload.keys() if not isinstance(payload[key], str)]
    problems += device_problems(payload.get("device"))
    problems += origin_problems(payload.get("origin"))
    if "availability" in payload and "availability_topic" in payload:
        problems.append("availability and availability_topic are mutually exclusive")
    if payload.get("entity_category") not in (None, *ENTITY_CATEGORIES):
        problems.append(f"entity_category {payload['entity_category']!r}")
    if payload.get("device_class") == "enum" and not payload.get("options"):
        problems.append("device_class enum needs a non-empty options list")
    if "options" in payload and ({"state_class", "unit_of_measurement"} & payload.keys()):
        problems.append("options cannot be combined with state_class or unit_of_measurement")
    if "image_encoding" in payload and payload["image_encoding"] != "b64":
        problems.append(f"image_encoding {payload['image_encoding']!r} (only 'b64' is documented)")
    if payload.get("qos", 0) not in (0, 1, 2):
        problems.append(f"qos {payload['qos']!r}")
    return problems


def device_problems(device: Any) -> list[str]:
    if not isinstance(device, dict):
        return ["device block missing (needed to group entities)"]
    problems = [f"undocumented device key {key}" for key in sorted(device.keys() - DEVICE_KEYS)]
    if not (device.get("identifiers") or device.get("connections")):
        problems.append("device needs identifiers or connections")
    return problems


def origin_problems(origin: Any) -> list[str]:
    if origin is None:
        return []
    problems = [f"undocumented origin key {key}" for key in sorted(origin.keys() - ORIGIN_KEYS)]
    return problems + ([] if origin.get("name") else ["origin needs a name"])


def is_topic_name(topic: Any) -> bool:
    return isinstance(topic, str) and bool(topic) and not set(topic) & {"+", "#", "\0"}


def component_of(message: DiscoveryMessage) -> str:
    match = re.fullmatch(rf"{DEFAULT_DISCOVERY_PREFIX}/(\w+)/{DISCOVERY_ID}/{DISCOVERY_ID}/config", message.topic)
    assert match, f"{message.topic} does not follow <prefix>/<component>/<node_id>/<object_id>/config"
    return match.group(1)


def by_component(messages: list[DiscoveryMessage]) -> dict[str, dict[str, Any]]:
    return {component_of(message): message.payload for message in messages}


# -- templates, rendered like Home Assistant does (sandboxed Jinja) ------------------------------
def template_environment() -> jinja2.Environment:
    # StrictUndefined: a template that names a field the result does not have fails here.
    return jinja2_sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)


def render(template: str, payload: bytes) -> str:
    text = payload.decode()
    try:
        value_json = json.loads(text)
    except ValueError:
        value_json = None  # Home Assistant leaves value_json undefined for non-JSON payloads
    variables = {"value": text} if value_json is None else {"value": text, "value_json": value_json}
    return template_environment().from_string(template).render(**variables)


@pytest.fixture(scope="module")
def messages() -> list[DiscoveryMessage]:
    return discovery_messages(DEVICE_ID, software_version="0.1.0")


# -- pure logic ------------------------------------------------------------------------------------
def test_one_config_per_component_under_the_device_node(messages):
    assert sorted(by_component(messages)) == ["binary_sensor", "camera", "sensor"]
    assert all(message.topic.split("/")[2] == DEVICE_ID for message in messages)


@pytest.mark.parametrize("component", ["sensor", "binary_sensor", "camera"])
def test_payload_follows_the_documented_schema(messages, component):
    assert schema_problems(component, by_component(messages)[component]) == []


def test_the_schema_check_catches_typos_and_missing_keys():
    broken = {"stat_topic": "a/b", "device": {"name": "x"}, "value_template": 3}
    problems = schema_problems("sensor", broken)
    assert "missing required key state_topic" in problems
    assert "undocumented key stat_topic" in problems
    assert "device needs identifiers or connections" in problems
    assert "value_template is not a string" in problems


def test_payloads_are_strict_json_and_ids_unique(messages):
    for message in messages:
        assert json.loads(message.payload_bytes()) == message.payload
    unique_ids = [message.payload["unique_id"] for message in messages]
    assert len(set(unique_ids)) == len(unique_ids)
    devices = [message.payload["device"] for message in messages]
    assert all(device == devices[0] for device in devices), "all entities must share one device block"
    assert set(devices[0]) >= {"identifiers", "name", "model", "manufacturer", "sw_version"}


def test_topics_are_the_contract_topics(messages):
    topics = Topics()
    configs = by_component(messages)
    assert configs["sensor"]["state_topic"] == configs["sensor"]["json_attributes_topic"] == topics.result(DEVICE_ID)
    assert configs["binary_sensor"]["state_topic"] == topics.status(DEVICE_ID)
    assert configs["camera"]["topic"] == topics.frame(DEVICE_ID)
    assert configs["camera"]["image_encoding"] == "b64"
    for component in ("sensor", "camera"):
        assert configs[component]["availability_topic"] == topics.status(DEVICE_ID)
        assert configs[component]["payload_available"] == "online"
        assert configs[component]["payload_not_available"] == "offline"


def test_custom_prefixes_are_used():
    messages = discovery_messages(DEVICE_ID, Topics("site1/emotion"), discovery_prefix="ha", software_version="1")
    assert all(message.topic.startswith("ha/") for message in messages)
    assert by_component_with_prefix(messages, "ha")["sensor"]["state_topic"] == f"site1/emotion/devices/{DEVICE_ID}/result"


def by_component_with_prefix(messages: list[DiscoveryMessage], prefix: str) -> dict[str, dict[str, Any]]:
    return {message.topic.split("/")[len(prefix.split("/"))]: message.payload for message in messages}


@pytest.mark.parametrize("bad", ["a/b/c", "cam a", "", "cam.a", "x" * 65])
def test_hostile_device_ids_are_refused(bad):
    with pytest.raises(ValueError):
        discovery_messages(bad)


def test_removal_topics_match_the_config_topics(messages):
    assert removal_topics(DEVICE_ID) == [message.topic for message in messages]


def test_emotion_state_is_the_top_face_label(messages):
    sensor = by_component(messages)["sensor"]
    small_sad, large_happy = face(track_id=1, box=(0, 0, 40, 40), top=4), face(track_id=2, box=(100, 100, 90, 90), top=3)
    message = result(faces=[small_sad, large_happy])
    assert render(sensor["value_template"], message.to_json()) == "happy"
    assert render(sensor["value_template"], result(faces=[]).to_json()) == "none"
    assert set(sensor["options"]) == {*EMOTIONS, "none"}


def test_attributes_are_the_top_face_probabilities(messages):
    sensor = by_component(messages)["sensor"]
    small_sad, large_happy = face(track_id=1, box=(0, 0, 40, 40), top=4), face(track_id=2, box=(100, 100, 90, 90), top=3)
    message = result(faces=[small_sad, large_happy])
    attributes = json.loads(render(sensor["json_attributes_template"], message.to_json()))
    assert attributes == {**large_happy.probabilities.model_dump(), "face_count": 2}
    assert message.top == large_happy  # the template agrees with the contract's notion of "top face"
    heartbeat = json.loads(render(sensor["json_attributes_template"], result(faces=[]).to_json()))
    assert heartbeat == {"face_count": 0}


def test_templates_name_only_result_fields(messages):
    # StrictUndefined already fails on unknown fields; this also proves the names come from the schema.
    sensor = by_component(messages)["sensor"]
    referenced = set(re.findall(r"value_json\.(\w+)", sensor["value_template"] + sensor["json_attributes_template"]))
    assert referenced and referenced <= set(Result.model_fields)


@pytest.mark.parametrize(("status", "expected"), [("online", "online"), ("offline", "offline"), ("stopped", "offline")])
def test_status_words_map_to_on_off_and_availability(messages, status, expected):
    configs = by_component(messages)
    connectivity = configs["binary_sensor"]
    assert render(connectivity["value_template"], status.encode()) == expected
    assert expected in (connectivity["payload_on"], connectivity["payload_off"])
    for component in ("sensor", "camera"):
        assert render(configs[component]["availability_template"], status.encode()) == expected


def test_acl_rule_scopes_the_device_to_its_own_node(messages):
    rule = device_acl_rule(DEVICE_ID)
    assert rule == f"topic write {DEFAULT_DISCOVERY_PREFIX}/+/{DEVICE_ID}/+/config"
    pattern = rule.split(" ", 2)[2]
    assert all(topic_matches(pattern, message.topic) for message in messages)
    assert not any(topic_matches(pattern, message.topic) for message in discovery_messages(DEVICES[1]))


def topic_matches(pattern: str, topic: str) -> bool:
    pattern_levels, topic_levels = pattern.split("/"), topic.split("/")
    return len(pattern_levels) == len(topic_levels) and all(p in ("+", t) for p, t in zip(pattern_levels, topic_levels))


# -- through the real broker -----------------------------------------------------------------------
def rendered_acl() -> str:
    """The ACL the broker fixture renders, from the same code (broker.acl)."""
    identities = {name: Identity(role=Role.DEVICE) for name in DEVICES}
    identities |= {role.value: Identity(role=role) for role in (Role.INGEST, Role.WEBUI, Role.RETRAIN, Role.MONITOR)}
    return render_acl(Topics(), identities)


def acl_block(acl: str, user: str) -> list[str]:
    lines, inside = [], False
    for line in acl.splitlines():
        if line.startswith("user "):
            inside = line == f"user {user}"
        elif inside and line.startswith("topic "):
            lines.append(line)
    return lines


def discovery_writable(acl: str) -> bool:
    return device_acl_rule(DEVICE_ID) in acl_block(acl, DEVICE_ID)


def discovery_readable_by_monitor(acl: str) -> bool:
    return any(line in (f"topic read {DEFAULT_DISCOVERY_PREFIX}/#", f"topic readwrite {DEFAULT_DISCOVERY_PREFIX}/#") for line in acl_block(acl, "monitor"))


NEEDS_ACL = (
    "broker ACL lacks the Home Assistant lines: add "
    f"'topic write {DEFAULT_DISCOVERY_PREFIX}/+/<device_id>/+/config' to broker.acl.device_rules and "
    f"'topic read {DEFAULT_DISCOVERY_PREFIX}/#' to the monitor role"
)


def publish_all(client, messages: list[DiscoveryMessage]) -> list[str | None]:
    deliveries = [client.publish(message.topic, message.payload_bytes(), qos=1, retain=True) for message in messages]
    assert all(delivery.wait(WAIT_S) for delivery in deliveries), "no PUBACK for a discovery publish"
    return [delivery.reason for delivery in deliveries]


def test_broker_enforces_what_the_acl_says(mqtt_client, messages):
    """Runs with or without the ACL line: the PUBACK matches what the rendered ACL grants."""
    reasons = publish_all(mqtt_client(DEVICE_ID), messages)
    if discovery_writable(rendered_acl()):
        assert reasons == [None] * len(messages)
    else:
        assert all(reason and "authori" in reason.lower() for reason in reasons), reasons


@pytest.mark.skipif(not (discovery_writable(rendered_acl()) and discovery_readable_by_monitor(rendered_acl())), reason=NEEDS_ACL)
def test_retained_discovery_reaches_a_late_subscriber(mqtt_client, messages):
    assert publish_all(mqtt_client(DEVICE_ID), messages) == [None] * len(messages)
    # Subscribing after the publish proves the configs are retained, as Home Assistant needs after its restarts.
    late = subscribe_and_wait(mqtt_client("monitor"), f"{DEFAULT_DISCOVERY_PREFIX}/+/{DEVICE_ID}/+/config", Collector())
    received = late.wait_count(len(messages))
    assert {message.topic: json.loads(message.payload) for message in received} == {m.topic: m.payload for m in messages}
    assert all(message.retain for message in received)
