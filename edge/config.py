"""The edge agent's one typed config: TOML file + ``EMQ_EDGE__*`` environment overrides.

Minimal config for a device provisioned with ``emq-pki add cam-1``::

    device_id = "cam-1"
    [source]
    spec = "0"              # camera 0; or a file, rtsp://…, gst:…, a folder
    [mqtt]
    host = "broker.example.org"

Everything else has a default that works; ``emq-edge --print-config``
shows the effective values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from comms.settings import MqttSettings, apply_identity_defaults
from common.config import StrictSettings
from contract.topics import DEVICE_ID_PATTERN, HOMEASSISTANT_DISCOVERY_PREFIX, RESERVED_IDENTITIES
from edge.perception.settings import AnnotationSettings, ClassificationSettings, DetectionSettings, TrackingSettings

ENV_PREFIX = "EMQ_EDGE__"
COMMANDS = ("pause", "resume", "set_fps", "snapshot", "rollback_model", "ping")


class SourceSettings(StrictSettings):
    spec: str = Field(default="0", description="Camera index, video file, rtsp:// or http(s):// URL, 'gst:<pipeline>', image folder or file.")
    loop: bool = Field(default=False, description="Repeat files, folders and images forever.")
    pace: bool = Field(default=False, description="Play video files at their own frame rate instead of as fast as possible.")
    image_fps: Annotated[float, Field(gt=0, le=120)] | None = Field(default=None, description="Rate for image folders/files.")
    camera_width: Annotated[int, Field(gt=0)] | None = None
    camera_height: Annotated[int, Field(gt=0)] | None = None
    camera_fps: Annotated[float, Field(gt=0)] | None = None


class ModelSettings(StrictSettings):
    store: Path | None = Field(default=None, description="Model registry folder; default $EMQ_MODEL_STORE or models/store.")
    version: str | None = Field(default=None, description="Pinned version; default: the registry's current model.")
    num_threads: Annotated[int, Field(ge=1, le=16)] = Field(default=1, description="LiteRT threads (1 leaves the other cores to detection).")


class ProcessingSettings(StrictSettings):
    max_fps: Annotated[float, Field(gt=0, le=120)] | None = Field(
        default=None, description="Cap on processed frames/s (live sources drop the rest; files are throttled). None = as fast as possible."
    )


class PublishSettings(StrictSettings):
    frame_fps: Annotated[float, Field(ge=0, le=240)] = Field(default=5.0, description="Annotated frames per second to publish (0 = none).")
    jpeg_quality: Annotated[int, Field(ge=10, le=100)] = 80
    frame_max_width: Annotated[int, Field(ge=64, le=4096)] | None = Field(default=640, description="Downscale published frames to this width.")
    include_crops: bool = Field(default=True, description="Attach each face's 64x64 grey crop (PNG) to results, for retraining.")
    heartbeat_s: Annotated[float, Field(ge=0)] = Field(default=5.0, description="Publish an empty result after this long without faces (0 = never).")
    stats_interval_s: Annotated[float, Field(gt=0)] = 10.0


class OutboxSettings(StrictSettings):
    path: Path | None = Field(default=None, description="SQLite file; default var/edge/<device_id>/outbox.db.")
    max_messages: Annotated[int, Field(ge=10)] = 100_000
    max_bytes: Annotated[int, Field(ge=1024 * 1024)] = 512 * 1024 * 1024
    max_age_s: Annotated[float, Field(gt=0)] = 7 * 24 * 3600.0
    durability: Literal["normal", "full"] = Field(default="normal", description="'full' also survives power loss (fsync per result).")
    window: Annotated[int, Field(ge=1, le=1000)] = Field(default=64, description="QoS 1 results in flight at once.")
    flush_timeout_s: Annotated[float, Field(ge=0)] = Field(default=10.0, description="On shutdown, wait this long for the outbox to drain.")
    keep_until: Literal["stored", "acknowledged"] = Field(
        default="stored",
        description="Keep a result until the cloud ingest has stored it (its stored mark), or only until the broker "
        "acknowledged it ('acknowledged': for a broker without our ingest; a broker crash can then lose results).",
    )
    resend_after_s: Annotated[float, Field(ge=1)] = Field(
        default=30.0, description="Send a result again when the cloud has not stored it this long after the broker took it."
    )


class CommandSettings(StrictSettings):
    allowed: list[Literal["pause", "resume", "set_fps", "snapshot", "rollback_model", "ping"]] = Field(
        default=list(COMMANDS), description="Commands this device accepts; others get an error reply."
    )


class HomeAssistantSettings(StrictSettings):
    enabled: bool = Field(default=True, description="Announce this device to Home Assistant (MQTT discovery, retained).")
    discovery_prefix: str = Field(
        default=HOMEASSISTANT_DISCOVERY_PREFIX, pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Home Assistant's discovery prefix (the broker ACL allows 'homeassistant').",
    )


class EdgeConfig(StrictSettings):
    device_id: str = Field(default="demo-cam", pattern=DEVICE_ID_PATTERN, description="This device's identity (certificate CN).")
    pki_dir: Path = Field(default=Path("var/pki"), description="Where `emq-pki` put ca.crt and clients/<device_id>.crt/.key.")
    data_dir: Path = Field(default=Path("var/edge"), description="Local state (outbox).")
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    source: SourceSettings = Field(default_factory=SourceSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    classification: ClassificationSettings = Field(default_factory=ClassificationSettings)
    annotation: AnnotationSettings = Field(default_factory=AnnotationSettings)
    processing: ProcessingSettings = Field(default_factory=ProcessingSettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    commands: CommandSettings = Field(default_factory=CommandSettings)
    homeassistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings)

    @model_validator(mode="after")
    def _fill_derived(self) -> "EdgeConfig":
        if self.device_id in RESERVED_IDENTITIES:
            raise ValueError(f"device_id {self.device_id!r} is reserved for a service")
        apply_identity_defaults(self.mqtt, self.pki_dir, self.device_id, client_id=self.device_id)
        if self.outbox.path is None:
            self.outbox.path = self.data_dir / self.device_id / "outbox.db"
        return self
