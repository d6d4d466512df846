"""The ingest service's typed config: TOML + ``EMQ_INGEST__*`` environment overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from comms.settings import MqttSettings, apply_identity_defaults
from common.config import StrictSettings

ENV_PREFIX = "EMQ_INGEST__"
IDENTITY = "ingest"


class RetentionSettings(StrictSettings):
    enabled: bool = Field(default=True, description="Run the retention sweep in this worker (enable it in one worker only).")
    interval_s: Annotated[float, Field(gt=0)] = 600.0
    frame_max_age_days: Annotated[float, Field(gt=0)] = 30.0
    frame_max_bytes_per_device: Annotated[int, Field(ge=1024 * 1024)] = 5 * 1024**3
    crop_max_age_days: Annotated[float, Field(gt=0)] = Field(
        default=365.0, description="Unlabelled face crops older than this are deleted; labelled ones are kept forever."
    )
    quarantine_max_age_days: Annotated[float, Field(gt=0)] = Field(default=30.0, description="Quarantine records older than this are deleted.")
    quarantine_max_rows: Annotated[int, Field(ge=100)] = Field(
        default=100_000, description="Beyond this many quarantine records the oldest go (each holds at most ~2 KB).",
    )


class StoredMarkSettings(StrictSettings):
    min_interval_s: Annotated[float, Field(gt=0, le=10)] = Field(
        default=0.2, description="Publish a device's stored mark at most this often while it moves."
    )
    repeat_s: Annotated[float, Field(gt=0)] = Field(
        default=5.0, description="Repeat an unchanged mark this often while the device sends (the edge sees we are alive)."
    )


class FrameStorageSettings(StrictSettings):
    backend: Literal["files", "database"] = Field(
        default="files",
        description="Where frame JPEGs go: files below data_dir (one machine), or the database itself, so ingest workers "
        "on several machines and a dashboard elsewhere share them (use PostgreSQL for that).",
    )


class IngestConfig(StrictSettings):
    pki_dir: Path = Field(default=Path("var/pki"), description="Where `emq-pki` put ca.crt and clients/ingest.crt/.key.")
    worker_name: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="A named worker is the broker identity ingest-<name> (its own certificate: emq-pki add ingest-<name> "
        "--role ingest); unnamed, it is the identity `ingest`. The identity is also the fixed client id.",
    )
    database_url: str = Field(default="sqlite:///var/cloud/emotion.db", description="sqlite:///path or postgresql://user:pass@host/db")
    data_dir: Path = Field(default=Path("var/cloud/data"), description="Frames and face crops are written below this folder only.")
    shared_group: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="Share the stream with other workers through $share/<group>/… subscriptions.",
    )
    store_frames: bool = True
    frames: FrameStorageSettings = Field(default_factory=FrameStorageSettings)
    frame_max_width: Annotated[int, Field(ge=1, le=65535)] = Field(default=8192, description="Frames whose JPEG header declares more are quarantined.")
    frame_max_height: Annotated[int, Field(ge=1, le=65535)] = Field(default=8192, description="Frames whose JPEG header declares more are quarantined.")
    batch_max: Annotated[int, Field(ge=1, le=10000)] = Field(default=200, description="Messages committed (and acknowledged) together.")
    batch_wait_ms: Annotated[float, Field(ge=0, le=5000)] = 20.0
    report_interval_s: Annotated[float, Field(gt=0)] = 30.0
    bad_input_log_interval_s: Annotated[float, Field(gt=0)] = Field(
        default=60.0, description="Bad input is logged once per reason per interval, then summed up in one line.",
    )
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(default=9310, description="Prometheus /metrics port; 0 disables it.")
    metrics_address: str = Field(default="127.0.0.1", description="Address the metrics server binds (0.0.0.0 to let Prometheus scrape from elsewhere).")
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    stored_marks: StoredMarkSettings = Field(default_factory=StoredMarkSettings)

    @property
    def identity(self) -> str:
        """The broker identity (certificate CN), which the broker also makes the client id."""
        return f"{IDENTITY}-{self.worker_name}" if self.worker_name else IDENTITY

    @model_validator(mode="after")
    def _fill_derived(self) -> "IngestConfig":
        apply_identity_defaults(self.mqtt, self.pki_dir, self.identity, client_id=self.identity)
        # A fixed client id with a persistent session: what arrives while we are
        # down (or unacknowledged when we die) is delivered when we come back.
        if "clean_start" not in self.mqtt.model_fields_set:
            self.mqtt.clean_start = False
        if "session_expiry_s" not in self.mqtt.model_fields_set:
            self.mqtt.session_expiry_s = 7 * 24 * 3600
        return self
