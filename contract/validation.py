"""Parse and validate payloads off the wire, with one clear reason on failure.

Every consumer (cloud ingest, web UI, edge command handler, tests, the CLI
``emq-validate``) goes through these functions, so a message is judged the
same way everywhere. Each raises :class:`ContractError` whose ``reason`` is a
short, log-safe sentence; callers turn it into a quarantine record or an
error reply, never a crash.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import TypeVar

import pybase64
from pydantic import BaseModel, ValidationError

from contract.messages import (
    MAX_FRAME_BYTES,
    MAX_RESULT_BYTES,
    MAX_SMALL_MESSAGE_BYTES,
    STATUSES,
    Command,
    ModelRelease,
    Reply,
    Result,
    Stats,
    StoredMark,
    utc_millis_epoch,
)

ModelType = TypeVar("ModelType", bound=BaseModel)

_JPEG_START = b"\xff\xd8\xff"
_MAX_ERRORS_SHOWN = 3
_MAX_REASON_CHARS = 500


class ContractError(ValueError):
    """A payload that breaks the wire contract; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:_MAX_REASON_CHARS]


def _check_size(payload: bytes, limit: int, what: str) -> None:
    if len(payload) > limit:
        raise ContractError(f"{what} too large: {len(payload)} bytes > {limit}")


def _format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:_MAX_ERRORS_SHOWN]:
        location = ".".join(str(part) for part in item["loc"]) or "message"
        parts.append(f"{location}: {item['msg']}")
    more = error.error_count() - len(parts)
    if more > 0:
        parts.append(f"(+{more} more)")
    return "; ".join(parts)


def parse_json_model(model: type[ModelType], payload: bytes | str, limit: int) -> ModelType:
    """Validate a JSON payload against ``model`` (strict, no NaN, no extra keys)."""
    if isinstance(payload, str):
        payload = payload.encode()
    _check_size(payload, limit, model.__name__.lower())
    try:
        return model.model_validate_json(payload, strict=True, context={"wire": True})
    except ValidationError as error:
        raise ContractError(_format_validation_error(error)) from None


def parse_result(payload: bytes | str, expected_device: str | None = None) -> Result:
    """A result from ``<prefix>/devices/<id>/result``; the id in the body must match the topic."""
    result = parse_json_model(Result, payload, MAX_RESULT_BYTES)
    if expected_device is not None and result.device_id != expected_device:
        raise ContractError(f"device_id {result.device_id!r} does not match the topic's device {expected_device!r}")
    return result


def parse_stats(payload: bytes | str, expected_device: str | None = None) -> Stats:
    stats = parse_json_model(Stats, payload, MAX_SMALL_MESSAGE_BYTES)
    if expected_device is not None and stats.device_id != expected_device:
        raise ContractError(f"device_id {stats.device_id!r} does not match the topic's device {expected_device!r}")
    return stats


def parse_stored_mark(payload: bytes | str, expected_device: str | None = None) -> StoredMark:
    mark = parse_json_model(StoredMark, payload, MAX_SMALL_MESSAGE_BYTES)
    if expected_device is not None and mark.device_id != expected_device:
        raise ContractError(f"device_id {mark.device_id!r} does not match the topic's device {expected_device!r}")
    return mark


def parse_command(payload: bytes | str) -> Command:
    return parse_json_model(Command, payload, MAX_SMALL_MESSAGE_BYTES)


def parse_reply(payload: bytes | str) -> Reply:
    return parse_json_model(Reply, payload, MAX_SMALL_MESSAGE_BYTES)


def parse_model_release(payload: bytes | str) -> ModelRelease:
    return parse_json_model(ModelRelease, payload, MAX_SMALL_MESSAGE_BYTES)


def parse_status(payload: bytes | str) -> str:
    """Availability is a bare word (Home Assistant and Frigate style)."""
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    if text not in STATUSES:
        raise ContractError(f"status must be one of {', '.join(STATUSES)}; got {text[:40]!r}")
    return text


def parse_frame(payload: bytes | str) -> bytes:
    """Decode a frame payload (base64 JPEG text) to JPEG bytes.

    Checks the envelope only (size, strict base64, JPEG start marker); a
    full decode is the consumer's business since it costs milliseconds.
    """
    if isinstance(payload, str):
        payload = payload.encode("ascii", "replace")
    _check_size(payload, MAX_FRAME_BYTES, "frame")
    try:
        jpeg = pybase64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ContractError(f"frame is not valid base64: {error}") from None
    if not jpeg.startswith(_JPEG_START):
        raise ContractError("frame is not a JPEG image (no SOI marker)")
    return jpeg


@dataclass(frozen=True)
class FrameMeta:
    """Links a frame to its result. Sent as MQTT 5 user properties on the frame.

    ``mosquitto_sub -V 5 -F '%P'`` prints them. ``result_msg_id`` is empty when
    the frame had no faces (no result is published for it then).
    """

    frame_number: int
    captured_at: str
    result_seq: int | None = None
    result_msg_id: str = ""

    def to_properties(self) -> list[tuple[str, str]]:
        pairs = [("frame_number", str(self.frame_number)), ("captured_at", self.captured_at)]
        if self.result_seq is not None:
            pairs += [("result_seq", str(self.result_seq)), ("result_msg_id", self.result_msg_id)]
        return pairs

    @classmethod
    def from_properties(cls, pairs: list[tuple[str, str]]) -> "FrameMeta":
        """The frame's link from its MQTT user properties; :class:`ContractError` for anything else.

        Properties come from the device as free text, so each one is checked
        here, before anything uses it: a timestamp that is not one, a number
        that is not a small decimal, a text the database would refuse.
        """
        values = _property_values(pairs)
        if "frame_number" not in values or "captured_at" not in values:
            raise ContractError("frame user properties incomplete: frame_number and captured_at are required")
        seq = values.get("result_seq")
        return cls(
            frame_number=_property_counter(values, "frame_number"),
            captured_at=_property_timestamp(values["captured_at"]),
            result_seq=_property_counter(values, "result_seq") if seq is not None else None,
            result_msg_id=_property_msg_id(values.get("result_msg_id", "")),
        )


_COUNTER_RE = re.compile(r"[0-9]{1,19}")
_MAX_COUNTER = 2**63 - 1  # BIGINT in both databases
_MSG_ID_RE = re.compile(r"[\x21-\x7e]{0,64}")  # printable ASCII: any UUID spelling, nothing a database refuses


def _property_values(pairs) -> dict[str, str]:
    try:
        values = dict(pairs)
    except (TypeError, ValueError):
        raise ContractError("frame user properties are not name/value pairs") from None
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in values.items()):
        raise ContractError("frame user properties must be text")
    return values


def _property_counter(values: dict[str, str], name: str) -> int:
    text = values[name]
    if not _COUNTER_RE.fullmatch(text) or int(text) > _MAX_COUNTER:
        raise ContractError(f"frame user property {name} must be a decimal number from 0 to 2^63-1; got {text[:40]!r}")
    return int(text)


def _property_timestamp(text: str) -> str:
    try:
        if not text.isascii():
            raise ValueError("not ASCII")
        utc_millis_epoch(text)
    except (ValueError, OverflowError):
        raise ContractError(f"frame user property captured_at must be ISO-8601 UTC with milliseconds; got {text[:40]!r}") from None
    return text


def _property_msg_id(text: str) -> str:
    if not _MSG_ID_RE.fullmatch(text):
        raise ContractError(f"frame user property result_msg_id must be up to 64 printable ASCII characters; got {text[:40]!r}")
    return text
