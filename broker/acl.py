"""Render Mosquitto's ACL file from the identity registry and the topic layout.

Explicit ``user`` blocks (not ``pattern`` lines): Mosquitto applies patterns
to *every* user, which would let the read-only ``monitor`` publish under a
device-shaped topic of its own name. With one block per identity, anything
not granted here is denied.
"""

from __future__ import annotations

from broker.identities import Identity, Role
from contract.topics import HOMEASSISTANT_DISCOVERY_PREFIX, Channel, Topics

DEVICE_WRITES = (Channel.RESULT, Channel.FRAME, Channel.STATUS, Channel.STATS, Channel.COMMAND_REPLY)


def device_rules(topics: Topics, device_id: str) -> list[str]:
    rules = [f"topic write {topics.device(device_id, channel)}" for channel in DEVICE_WRITES]
    rules += [
        f"topic read {topics.command(device_id)}",
        # What the cloud has stored of this device's results (the ingest's retained mark).
        f"topic read {topics.stored(device_id)}",
        # Whether the ingest workers are up (a worker coming online makes the edge resend what is unconfirmed).
        f"topic read {topics.all_service_status}",
        f"topic read {topics.prefix}/devices/{device_id}/model/#",
        f"topic read {topics.prefix}/models/#",
        # Home Assistant MQTT discovery: this device's own config topics only.
        f"topic write {HOMEASSISTANT_DISCOVERY_PREFIX}/+/{device_id}/+/config",
    ]
    return rules


def service_rules(topics: Topics, role: Role, name: str) -> list[str]:
    devices = f"{topics.prefix}/devices"
    models = f"{topics.prefix}/models/#"
    if role is Role.INGEST:
        return [
            f"topic read {devices}/#", f"topic read {models}",
            f"topic write {topics.all_devices(Channel.STORED)}", f"topic write {topics.service_status(name)}",
        ]
    if role is Role.WEBUI:
        return [f"topic read {devices}/#", f"topic read {models}", f"topic write {topics.all_devices(Channel.COMMAND)}"]
    if role is Role.RETRAIN:
        return [
            f"topic readwrite {models}",
            f"topic write {devices}/+/model/#",
            f"topic read {topics.all_devices(Channel.STATUS)}",
            f"topic read {topics.all_devices(Channel.STATS)}",
        ]
    if role is Role.MONITOR:
        return [f"topic read {topics.prefix}/#", f"topic read {HOMEASSISTANT_DISCOVERY_PREFIX}/#", "topic read $SYS/#"]
    if role is Role.HOMEASSISTANT:
        return [
            f"topic read {topics.all_devices(Channel.RESULT)}",
            f"topic read {topics.all_devices(Channel.FRAME)}",
            f"topic read {topics.all_devices(Channel.STATUS)}",
            f"topic read {HOMEASSISTANT_DISCOVERY_PREFIX}/#",
            f"topic write {HOMEASSISTANT_DISCOVERY_PREFIX}/status",
        ]
    raise ValueError(f"no rules for role {role}")


def rules_for(topics: Topics, name: str, identity: Identity) -> list[str]:
    if identity.role is Role.DEVICE:
        return device_rules(topics, name)
    return service_rules(topics, identity.role, name)


def render_acl(topics: Topics, identities: dict[str, Identity]) -> str:
    lines = [
        "# Rendered by `emq-broker render` from the identity registry; do not edit by hand.",
        "# Anything not granted below is denied.",
        "",
    ]
    for name, identity in sorted(identities.items()):
        lines.append(f"# {identity.role.value}")
        lines.append(f"user {name}")
        lines += rules_for(topics, name, identity)
        lines.append("")
    return "\n".join(lines)
