"""Topic names: the one place that says where every message lives.

Layout (``<prefix>`` defaults to ``emotion``)::

    <prefix>/devices/<device_id>/result        result JSON, QoS 1          device -> cloud
    <prefix>/devices/<device_id>/frame         base64 JPEG text, QoS 0     device -> cloud
    <prefix>/devices/<device_id>/status        online|offline|stopped, retained (LWT)
    <prefix>/devices/<device_id>/stats         stats JSON, retained
    <prefix>/devices/<device_id>/stored        stored mark JSON, retained  ingest -> device
    <prefix>/devices/<device_id>/cmd           command JSON                web UI -> device
    <prefix>/devices/<device_id>/cmd/reply     reply JSON                  device -> web UI
    <prefix>/devices/<device_id>/model/release release manifest, retained (targeted rollout)
    <prefix>/devices/<device_id>/model/blob    model bytes, retained        (targeted rollout)
    <prefix>/services/<identity>/status        online|offline|stopped of a cloud service (ingest workers)
    <prefix>/models/release                    release manifest, retained  (fleet)
    <prefix>/models/blob                       model bytes, retained        (fleet)

Devices live under ``devices/`` and fleet-wide data under ``models/`` so that
no device id can ever shadow a fleet topic. The broker ACL
(:mod:`broker.acl`) is rendered from these same functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

DEFAULT_PREFIX = "emotion"
# Home Assistant's MQTT discovery prefix; the broker ACL lets a device write its own configs there.
HOMEASSISTANT_DISCOVERY_PREFIX = "homeassistant"

# A device id becomes a topic level, a certificate CN, a folder name and a
# database key, so it is restricted to characters that are safe in all four:
# no '/', '+', '#', '.', NUL or whitespace, and bounded in length.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}(/[A-Za-z0-9_-]{1,32}){0,3}$")

# Identities that belong to services; a device may not take one of these
# names, or it would inherit that service's broker permissions.
RESERVED_IDENTITIES = frozenset({"ingest", "webui", "retrain", "monitor", "homeassistant", "admin"})


class Channel(str, Enum):
    """The per-device message channels, each a topic suffix."""

    RESULT = "result"
    FRAME = "frame"
    STATUS = "status"
    STATS = "stats"
    STORED = "stored"
    COMMAND = "cmd"
    COMMAND_REPLY = "cmd/reply"
    MODEL_RELEASE = "model/release"
    MODEL_BLOB = "model/blob"


class InvalidDeviceId(ValueError):
    """A device id that is not safe to use as a topic level, CN or path."""


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is valid, else raise :class:`InvalidDeviceId`."""
    if not isinstance(device_id, str) or not _DEVICE_ID_RE.fullmatch(device_id):
        shown = repr(device_id)[:80]
        raise InvalidDeviceId(
            f"invalid device id {shown}: use 1-64 of A-Z a-z 0-9 _ -, starting with a letter or digit"
        )
    return device_id


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid topic prefix (1-4 plain levels)."""
    if not _PREFIX_RE.fullmatch(prefix or ""):
        raise ValueError(f"invalid topic prefix {prefix!r}: 1-4 levels of A-Z a-z 0-9 _ -")
    return prefix


@dataclass(frozen=True)
class ParsedTopic:
    """What a device topic says: which device, which channel."""

    device_id: str
    channel: Channel


@dataclass(frozen=True)
class Topics:
    """Topic names under one prefix. Build once from config, pass around."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    # -- per device -----------------------------------------------------
    def device(self, device_id: str, channel: Channel) -> str:
        return f"{self.prefix}/devices/{check_device_id(device_id)}/{channel.value}"

    def result(self, device_id: str) -> str:
        return self.device(device_id, Channel.RESULT)

    def frame(self, device_id: str) -> str:
        return self.device(device_id, Channel.FRAME)

    def status(self, device_id: str) -> str:
        return self.device(device_id, Channel.STATUS)

    def stats(self, device_id: str) -> str:
        return self.device(device_id, Channel.STATS)

    def stored(self, device_id: str) -> str:
        return self.device(device_id, Channel.STORED)

    def command(self, device_id: str) -> str:
        return self.device(device_id, Channel.COMMAND)

    def command_reply(self, device_id: str) -> str:
        return self.device(device_id, Channel.COMMAND_REPLY)

    def device_model_release(self, device_id: str) -> str:
        return self.device(device_id, Channel.MODEL_RELEASE)

    def device_model_blob(self, device_id: str) -> str:
        return self.device(device_id, Channel.MODEL_BLOB)

    # -- fleet ----------------------------------------------------------
    @property
    def model_release(self) -> str:
        return f"{self.prefix}/models/release"

    @property
    def model_blob(self) -> str:
        return f"{self.prefix}/models/blob"

    # -- cloud services -----------------------------------------------------
    def service_status(self, identity: str) -> str:
        return f"{self.prefix}/services/{check_device_id(identity)}/status"

    @property
    def all_service_status(self) -> str:
        return f"{self.prefix}/services/+/status"

    # -- subscriptions (wildcards) ---------------------------------------
    def all_devices(self, channel: Channel) -> str:
        return f"{self.prefix}/devices/+/{channel.value}"

    @property
    def everything(self) -> str:
        return f"{self.prefix}/#"

    # -- parsing ----------------------------------------------------------
    def parse(self, topic: str) -> ParsedTopic | None:
        """Split a device topic into (device id, channel); None if it is not one.

        Raises :class:`InvalidDeviceId` when the shape is right but the id is
        hostile, so the caller can quarantine it with that reason.
        """
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            return None
        device_id, _, suffix = topic[len(head):].partition("/")
        try:
            channel = Channel(suffix)
        except ValueError:
            return None
        return ParsedTopic(check_device_id(device_id), channel)
