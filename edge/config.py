"""The edge agent's one typed config: TOML file + ``EMQ_EDGE__*`` environment overrides.

Minimal config for a device provisioned with ``emq-pki add cam-1``::

    device_id = "cam-1"
    [source]
    spec = "0"              # camera 0; or a file, rtsp://…, gst:…, csi (Jetson CSI camera), a folder
    [mqtt]
    host = "broker.example.org"

Everything else has a default that works; ``emq-edge --print-config``
shows the effective values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from comms.settings import MqttSettings, apply_identity_defaults
from common.config import StrictSettings
from contract.topics import DEVICE_ID_PATTERN, HOMEASSISTANT_DISCOVERY_PREFIX, RESERVED_IDENTITIES
from edge.perception.settings import AnnotationSettings, ClassificationSettings, DetectionSettings, TrackingSettings

ENV_PREFIX = "EMQ_EDGE__"
COMMANDS = ("pause", "resume", "set_fps", "snapshot", "rollback_model", "ping")


CSI_SPEC = re.compile(r"^csi(?::(\d+))?$")
MAX_SENSOR_ID = 7


class GStreamerSettings(StrictSettings):
    """How ``gst:`` pipelines and the ``csi`` camera run, and the frame size they deliver."""

    backend: Literal["auto", "subprocess", "opencv"] = Field(
        default="auto",
        description="'subprocess': a gst-launch-1.0 child writes raw frames to a pipe (any OpenCV, e.g. pip's); "
        "'opencv': cv2.CAP_GSTREAMER (needs an OpenCV built with GStreamer); 'auto': opencv where it has GStreamer, else subprocess.",
    )
    width: Annotated[int, Field(ge=16, le=8192)] = Field(
        default=640, description="Frame width when a 'gst:' pipeline does not end with caps giving width and height."
    )
    height: Annotated[int, Field(ge=16, le=8192)] = Field(default=480, description="Frame height, likewise.")
    launcher: str = Field(default="gst-launch-1.0", min_length=1, description="gst-launch program (name on PATH or a path).")
    open_timeout_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=20.0, description="How long the first frame may take (a CSI camera needs a few seconds to start)."
    )
    read_timeout_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=5.0, description="A pipeline silent this long is restarted (with the same backoff as a camera)."
    )


class CsiSettings(StrictSettings):
    """The Jetson CSI camera of ``source.spec = "csi"`` (or ``"csi:N"``, sensor N): nvarguscamerasrc."""

    sensor_id: Annotated[int, Field(ge=0, le=MAX_SENSOR_ID)] = Field(default=0, description="Camera port; 'csi:N' overrides it.")
    sensor_mode: Annotated[int, Field(ge=0, le=31)] | None = Field(
        default=None, description="Sensor mode (`gst-inspect-1.0 nvarguscamerasrc`, the camera's mode table); None: chosen from width/height/fps."
    )
    width: Annotated[int, Field(ge=16, le=8192)] = Field(default=1280, description="Capture width (a size the sensor mode delivers).")
    height: Annotated[int, Field(ge=16, le=8192)] = Field(default=720, description="Capture height.")
    fps: Annotated[int, Field(ge=1, le=240)] = Field(default=30, description="Capture frame rate.")
    flip_method: Annotated[int, Field(ge=0, le=7)] = Field(
        default=0, description="nvvidconv flip-method: 0 none, 1 rotate 90 counter-clockwise, 2 rotate 180, 3 rotate 90 clockwise, "
        "4 horizontal flip, 5 upper-right diagonal, 6 vertical flip, 7 upper-left diagonal.",
    )
    output_width: Annotated[int, Field(ge=16, le=8192)] | None = Field(default=None, description="Scale to this width on the GPU (nvvidconv); None: capture width.")
    output_height: Annotated[int, Field(ge=16, le=8192)] | None = Field(default=None, description="Scale to this height; set both or neither.")

    @model_validator(mode="after")
    def _output_size_complete(self) -> "CsiSettings":
        if (self.output_width is None) != (self.output_height is None):
            raise ValueError("set both output_width and output_height, or neither")
        return self


class SourceSettings(StrictSettings):
    spec: str = Field(default="0", description="Camera index, video file, rtsp:// or http(s):// URL, 'gst:<pipeline>', 'csi' or 'csi:<sensor id>', image folder or file.")
    loop: bool = Field(default=False, description="Repeat files, folders and images forever.")
    pace: bool = Field(default=False, description="Play video files at their own frame rate instead of as fast as possible.")
    image_fps: Annotated[float, Field(gt=0, le=120)] | None = Field(default=None, description="Rate for image folders/files.")
    camera_width: Annotated[int, Field(gt=0)] | None = None
    camera_height: Annotated[int, Field(gt=0)] | None = None
    camera_fps: Annotated[float, Field(gt=0)] | None = None
    gstreamer: GStreamerSettings = Field(default_factory=GStreamerSettings)
    csi: CsiSettings = Field(default_factory=CsiSettings)

    @model_validator(mode="after")
    def _csi_spec_is_well_formed(self) -> "SourceSettings":
        text = self.spec.strip()
        if text == "csi" or text.startswith("csi:"):
            match = CSI_SPEC.match(text)
            if match is None:
                raise ValueError(f"spec {text!r}: expected 'csi' or 'csi:<sensor id>' (a file named so: 'file:{text}')")
            if match.group(1) is not None and int(match.group(1)) > MAX_SENSOR_ID:
                raise ValueError(f"spec {text!r}: sensor id must be 0..{MAX_SENSOR_ID}")
        return self


class ModelSettings(StrictSettings):
    store: Path | None = Field(default=None, description="Model registry folder; default $EMQ_MODEL_STORE or models/store.")
    version: str | None = Field(default=None, description="Pinned version; default: the registry's current model.")
    num_threads: Annotated[int, Field(ge=1, le=16)] = Field(default=1, description="LiteRT threads (1 leaves the other cores to detection).")


class ProcessingSettings(StrictSettings):
    max_fps: Annotated[float, Field(gt=0, le=120)] | None = Field(
        default=None, description="Cap on processed frames/s (live sources drop the rest; files are throttled). None = as fast as possible."
    )


class WatchdogSettings(StrictSettings):
    stall_s: Annotated[float, Field(ge=1)] = Field(
        default=30.0, description="Unhealthy when no frame was processed for this long while the source should deliver.",
    )
    interval_s: Annotated[float, Field(gt=0, le=60)] = Field(default=5.0, description="How often health is judged and reported.")
    health_file: Path | None = Field(
        default=None, description="Health JSON for container healthchecks; default <data_dir>/<device_id>/health.json.",
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
    watchdog: WatchdogSettings = Field(default_factory=WatchdogSettings)

    @model_validator(mode="after")
    def _fill_derived(self) -> "EdgeConfig":
        if self.device_id in RESERVED_IDENTITIES:
            raise ValueError(f"device_id {self.device_id!r} is reserved for a service")
        apply_identity_defaults(self.mqtt, self.pki_dir, self.device_id, client_id=self.device_id)
        if self.outbox.path is None:
            self.outbox.path = self.data_dir / self.device_id / "outbox.db"
        if self.watchdog.health_file is None:
            self.watchdog.health_file = self.data_dir / self.device_id / "health.json"
        return self
