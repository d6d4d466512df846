"""Message schemas: what travels on every topic, validated the same way on both sides.

Pydantic models are the source of truth; the JSON Schema files under
``contract/schema/`` are generated from them (``python -m contract.schema``)
for consumers in other languages. Checks that JSON Schema cannot express
(probabilities summing to 1, the top label matching the arg-max, the 2019
legacy fields matching the top face) live in the validators below.
"""

from __future__ import annotations

import binascii
import re
import struct
import uuid
from datetime import datetime, timezone
from functools import cached_property, lru_cache
from typing import Annotated, Any, Literal

import pybase64
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from contract.emotions import EMOTIONS
from contract.topics import DEVICE_ID_PATTERN

RESULT_SCHEMA = "emotion.result/2"
STATS_SCHEMA = "emotion.stats/1"
COMMAND_SCHEMA = "emotion.command/1"
REPLY_SCHEMA = "emotion.reply/1"
MODEL_RELEASE_SCHEMA = "emotion.model-release/1"
STORED_SCHEMA = "emotion.stored/1"

# Size limits. A result with 64 faces and their 64x64 PNG crops stays well
# under 1 MiB; a 1280-wide JPEG frame in base64 is ~150-400 KiB.
MAX_RESULT_BYTES = 1024 * 1024
MAX_FRAME_BYTES = 4 * 1024 * 1024
MAX_SMALL_MESSAGE_BYTES = 64 * 1024
MAX_FACES = 64
MAX_CROP_BASE64_CHARS = 24 * 1024
CROP_SIZE = 64
PROBABILITY_SUM_TOLERANCE = 0.01
TOP_LABEL_TOLERANCE = 1e-3

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
STATUS_STOPPED = "stopped"
STATUSES = (STATUS_ONLINE, STATUS_OFFLINE, STATUS_STOPPED)

FRAME_CONTENT_TYPE = "image/jpeg;base64"
JSON_CONTENT_TYPE = "application/json"

_CANONICAL_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UTC_MILLIS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GREYSCALE = 0

EmotionLabel = Literal["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, description="Device identity (also its certificate CN).")]
ShortText = Annotated[str, Field(min_length=1, max_length=128)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Pixels = Annotated[int, Field(ge=0, le=65535)]
Counter = Annotated[int, Field(ge=0, le=2**63 - 1)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# An epoch is a fresh random id each time an edge agent starts (its outbox opens).
EpochId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The agent run (epoch) this seq counts in.")]
VersionText = Annotated[str, Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}$")]


# -- time ------------------------------------------------------------------
def utc_millis(moment: datetime | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``: ``2026-11-22T03:47:13.123Z``."""
    moment = (moment or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_utc_millis(text: str) -> datetime:
    """Inverse of :func:`utc_millis`; raises ValueError on any other shape."""
    if not _UTC_MILLIS_RE.fullmatch(text):
        raise ValueError("must be ISO-8601 UTC with milliseconds, e.g. 2026-11-22T03:47:13.123Z")
    # fromisoformat is ~50x faster than strptime; the regex above already fixed the shape.
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)


@lru_cache(maxsize=4096)
def utc_millis_epoch(text: str) -> float:
    """Seconds since the epoch of a :func:`utc_millis` text (ValueError if it is not one).

    Cached: validation and storage read the same timestamp several times.
    """
    return parse_utc_millis(text).timestamp()


UtcMillis = Annotated[str, Field(max_length=24, description="ISO-8601 UTC with milliseconds, e.g. 2026-11-22T03:47:13.123Z")]


# -- base ------------------------------------------------------------------
class Message(BaseModel):
    """Strict base: unknown fields are errors, no silent type coercion, no NaN."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True, populate_by_name=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class Versioned(Message):
    """A top-level message: it names its schema version, and off the wire it must."""

    @model_validator(mode="after")
    def _schema_required_on_the_wire(self, info: ValidationInfo) -> "Versioned":
        # Python callers may omit `schema` (it has a default); a message off the
        # wire must say which schema it follows, or we cannot trust its shape.
        # (An "after" check on the fields set: a "before" one would make pydantic
        # turn the JSON into Python objects first, a fifth of the parse time.)
        if "schema_" not in self.model_fields_set and info.context and info.context.get("wire"):
            raise ValueError("schema: field required (the message must name its schema version)")
        return self


class Box(Message):
    """A face rectangle in full-frame pixels: top-left corner, width, height."""

    x: Pixels
    y: Pixels
    w: Annotated[int, Field(ge=1, le=65535)]
    h: Annotated[int, Field(ge=1, le=65535)]

    @property
    def area(self) -> int:
        return self.w * self.h


class Probabilities(Message):
    """All seven class probabilities, by name, in :data:`EMOTIONS` order."""

    angry: Probability
    disgust: Probability
    fear: Probability
    happy: Probability
    sad: Probability
    surprise: Probability
    neutral: Probability

    @model_validator(mode="after")
    def _sums_to_one(self) -> "Probabilities":
        total = sum(self.as_tuple())
        if abs(total - 1.0) > PROBABILITY_SUM_TOLERANCE:
            raise ValueError(f"probabilities sum to {total:.4f}, expected 1 +/- {PROBABILITY_SUM_TOLERANCE}")
        return self

    def as_tuple(self) -> tuple[float, ...]:
        # Spelled out (not getattr over EMOTIONS): this runs several times per face on the ingest's hot path.
        return (self.angry, self.disgust, self.fear, self.happy, self.sad, self.surprise, self.neutral)

    def top(self) -> tuple[str, float]:
        values = self.as_tuple()
        best = max(values)
        return EMOTIONS[values.index(best)], best

    @classmethod
    def from_sequence(cls, values: Any, decimals: int = 5) -> "Probabilities":
        """Build from 7 numbers in model output order (e.g. a numpy row)."""
        values = [float(v) for v in values]
        if len(values) != len(EMOTIONS):
            raise ValueError(f"expected {len(EMOTIONS)} probabilities, got {len(values)}")
        return cls(**{name: round(v, decimals) for name, v in zip(EMOTIONS, values)})


def decode_crop_png(text: str) -> bytes:
    """A face crop must be base64 of a 64x64 greyscale PNG; returns the PNG bytes."""
    try:
        raw = pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"crop is not valid base64: {error}") from None
    if not raw.startswith(_PNG_SIGNATURE) or len(raw) < 33 or raw[12:16] != b"IHDR":
        raise ValueError("crop is not a PNG image")
    width, height, _depth, colour_type = struct.unpack(">IIBB", raw[16:26])
    if (width, height) != (CROP_SIZE, CROP_SIZE) or colour_type != _PNG_GREYSCALE:
        raise ValueError(f"crop must be a {CROP_SIZE}x{CROP_SIZE} greyscale PNG, got {width}x{height} colour type {colour_type}")
    return raw


class Face(Message):
    """One classified face."""

    box: Box
    probabilities: Probabilities
    label: EmotionLabel = Field(description="Arg-max of probabilities (after optional temporal smoothing it may differ; see smoothed_label).")
    confidence: Probability = Field(description="Probability of `label`.")
    track_id: Counter = Field(description="Stable id of this face across frames of one device run.")
    smoothed_label: EmotionLabel | None = Field(default=None, description="Label after temporal smoothing over the track, if enabled.")
    crop_png_b64: Annotated[str, Field(max_length=MAX_CROP_BASE64_CHARS)] | None = Field(
        default=None, description="64x64 greyscale face crop, base64 PNG, for retraining."
    )

    @cached_property
    def crop_png(self) -> bytes | None:
        """The crop's PNG bytes, or None if the face carries no crop.

        Decoded (and checked) once, by validation; the ingest stores these bytes,
        so the ~4 KB of base64 is not decoded a second time.
        """
        return None if self.crop_png_b64 is None else decode_crop_png(self.crop_png_b64)

    @model_validator(mode="after")
    def _crop_is_png(self) -> "Face":
        try:
            self.crop_png  # noqa: B018 - decodes, checks and caches
        except ValueError as error:
            raise ValueError(f"crop_png_b64: {error}") from None
        return self

    @model_validator(mode="after")
    def _label_is_top(self) -> "Face":
        top_probability = max(self.probabilities.as_tuple())
        label_probability = getattr(self.probabilities, self.label)
        if abs(label_probability - top_probability) > TOP_LABEL_TOLERANCE:
            raise ValueError(f"label {self.label!r} is not the most probable class ({self.probabilities.top()[0]!r})")
        if abs(self.confidence - label_probability) > TOP_LABEL_TOLERANCE:
            raise ValueError(f"confidence {self.confidence} does not match probabilities[{self.label!r}] = {label_probability}")
        return self


class ModelInfo(Message):
    name: ShortText
    version: VersionText


class FrameSize(Message):
    width: Annotated[int, Field(ge=1, le=65535)]
    height: Annotated[int, Field(ge=1, le=65535)]


class Result(Versioned):
    """One processed frame: every face with all seven probabilities.

    The fields ``video_file``, ``frame_number``, ``emotion_probability``,
    ``emotion_text`` and ``timestamp`` keep the 2019 Jetson demo's names and
    meaning (they describe the *top face*: the largest one in the frame), so
    consumers written for it keep working. A frame without faces (heartbeat)
    has ``faces: []`` and null ``emotion_*``.
    """

    schema_: Literal["emotion.result/2"] = Field(default=RESULT_SCHEMA, alias="schema")
    device_id: DeviceId
    epoch: EpochId = Field(description="A fresh id per agent start; (device_id, epoch, seq) identifies the result.")
    seq: Counter = Field(description="0, 1, 2, ... within the epoch: +1 per result, no gaps.")
    msg_id: Annotated[str, Field(min_length=32, max_length=36)] = Field(description="Unique id (UUID) for de-duplication.")
    captured_at: UtcMillis
    source: Annotated[str, Field(min_length=1, max_length=512)]
    frame_number: Counter
    frame: FrameSize
    model: ModelInfo
    faces: Annotated[list[Face], Field(max_length=MAX_FACES)]
    # -- 2019 demo fields (top face) --
    video_file: Annotated[str, Field(max_length=512)]
    emotion_probability: Probability | None
    emotion_text: EmotionLabel | None
    timestamp: UtcMillis

    @field_validator("msg_id")
    @classmethod
    def _msg_id_is_uuid(cls, value: str) -> str:
        if _CANONICAL_UUID_RE.fullmatch(value):  # what every sender we know writes: a quick check
            return value
        try:
            uuid.UUID(value)  # any other spelling uuid.UUID accepts
        except ValueError:
            raise ValueError("msg_id must be a UUID") from None
        return value

    @field_validator("captured_at", "timestamp")
    @classmethod
    def _is_utc_millis(cls, value: str, info: ValidationInfo) -> str:
        # The legacy `timestamp` is normally the same text as `captured_at`: checked once.
        if info.field_name == "timestamp" and value == info.data.get("captured_at"):
            return value
        utc_millis_epoch(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Result":
        for index, face in enumerate(self.faces):
            box = face.box
            if box.x + box.w > self.frame.width or box.y + box.h > self.frame.height:
                raise ValueError(f"faces[{index}].box lies outside the {self.frame.width}x{self.frame.height} frame")
        top = self.top
        expected_text = top.label if top else None
        expected_probability = top.confidence if top else None
        if self.emotion_text != expected_text or self.emotion_probability != expected_probability:
            raise ValueError("emotion_text/emotion_probability must describe the top (largest) face")
        return self

    @cached_property
    def top(self) -> Face | None:
        return top_face(self.faces)

    @cached_property
    def captured_epoch(self) -> float:
        """``captured_at`` in seconds since the epoch."""
        return utc_millis_epoch(self.captured_at)


def top_face(faces: list[Face]) -> Face | None:
    """The 2019 demo reported one face: we keep that as the largest one."""
    return max(faces, key=lambda face: face.box.area, default=None)


def make_result(
    *,
    device_id: str,
    epoch: str,
    seq: int,
    source: str,
    video_file: str,
    frame_number: int,
    captured_at: datetime,
    frame_width: int,
    frame_height: int,
    model_name: str,
    model_version: str,
    faces: list[Face],
    msg_id: str | None = None,
) -> Result:
    """Build a valid :class:`Result`, filling the legacy top-face fields."""
    top = top_face(faces)
    stamp = utc_millis(captured_at)
    return Result(
        device_id=device_id,
        epoch=epoch,
        seq=seq,
        msg_id=msg_id or str(uuid.uuid4()),
        captured_at=stamp,
        source=source,
        frame_number=frame_number,
        frame=FrameSize(width=frame_width, height=frame_height),
        model=ModelInfo(name=model_name, version=model_version),
        faces=faces,
        video_file=video_file,
        emotion_probability=top.confidence if top else None,
        emotion_text=top.label if top else None,
        timestamp=stamp,
    )


# -- stats -----------------------------------------------------------------
class StageTimings(Message):
    """Mean milliseconds per frame for each pipeline stage over the last interval."""

    decode: Annotated[float, Field(ge=0)] = 0.0
    detect: Annotated[float, Field(ge=0)] = 0.0
    classify: Annotated[float, Field(ge=0)] = 0.0
    draw: Annotated[float, Field(ge=0)] = 0.0
    encode: Annotated[float, Field(ge=0)] = 0.0
    publish: Annotated[float, Field(ge=0)] = 0.0


class Stats(Versioned):
    schema_: Literal["emotion.stats/1"] = Field(default=STATS_SCHEMA, alias="schema")
    device_id: DeviceId
    sent_at: UtcMillis
    uptime_s: Annotated[float, Field(ge=0)]
    fps: Annotated[float, Field(ge=0)]
    frames_processed: Counter
    frames_dropped: Counter
    results_published: Counter
    outbox_depth: Counter
    outbox_dropped: Counter
    stage_ms: StageTimings
    model: ModelInfo
    source: Annotated[str, Field(max_length=512)]
    paused: bool
    model_error: Annotated[str, Field(max_length=1024)] | None = Field(default=None, description="Why the last model release was refused, if it was.")
    healthy: bool = Field(default=True, description="False when no frame was processed for watchdog.stall_s while the source should deliver.")
    last_frame_age_s: Annotated[float, Field(ge=0)] | None = Field(default=None, description="Seconds since the last processed frame.")


# -- commands --------------------------------------------------------------
CommandName = Literal["pause", "resume", "set_fps", "snapshot", "rollback_model", "ping"]
ArgumentValue = bool | int | float | Annotated[str, Field(max_length=256)]


class Command(Versioned):
    """A request to one device; answered by a :class:`Reply` with the same ``id``."""

    schema_: Literal["emotion.command/1"] = Field(default=COMMAND_SCHEMA, alias="schema")
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    command: CommandName
    args: Annotated[dict[Annotated[str, Field(max_length=32)], ArgumentValue], Field(max_length=8)] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _args_fit_command(self) -> "Command":
        if self.command == "set_fps":
            fps = self.args.get("fps")
            if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 120:
                raise ValueError("set_fps needs args.fps, a number in (0, 120]")
        return self


class Reply(Versioned):
    schema_: Literal["emotion.reply/1"] = Field(default=REPLY_SCHEMA, alias="schema")
    id: Annotated[str, Field(max_length=64)] = Field(description="The command's id, or '' if it could not be read.")
    device_id: DeviceId
    ok: bool
    error: Annotated[str, Field(max_length=1024)] | None = None
    result: dict[str, Any] | None = None


# -- end-to-end delivery ------------------------------------------------------
class StoredMark(Versioned):
    """What the cloud has stored of one device's epoch: every seq from 0 to ``seq``, committed.

    Published (retained, QoS 1) by the ingest on ``<prefix>/devices/<id>/stored``
    after its commits; the device deletes its outbox rows up to the mark. A
    broker acknowledgement only means "in the broker's memory" (Mosquitto
    persists on autosave), so this mark, not the PUBACK, is what lets an
    edge forget a result.
    """

    schema_: Literal["emotion.stored/1"] = Field(default=STORED_SCHEMA, alias="schema")
    device_id: DeviceId
    epoch: EpochId
    seq: Counter = Field(description="The highest seq such that every seq 0..seq of the epoch is stored.")
    stored_at: UtcMillis


# -- model releases --------------------------------------------------------
class ModelRelease(Versioned):
    """Manifest of a model release; the TFLite bytes travel on the blob topic."""

    schema_: Literal["emotion.model-release/1"] = Field(default=MODEL_RELEASE_SCHEMA, alias="schema")
    name: ShortText
    version: VersionText
    parent: VersionText | None = None
    format: Literal["tflite"] = "tflite"
    sha256: Sha256Hex
    size: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)]
    created_at: UtcMillis
    metrics: dict[Annotated[str, Field(max_length=64)], Annotated[float, Field(allow_inf_nan=False)]] = Field(default_factory=dict)
