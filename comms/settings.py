"""Typed MQTT connection settings, shared by every component's config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator

from common.config import StrictSettings
from contract.topics import DEFAULT_PREFIX, check_prefix


class TlsSettings(StrictSettings):
    ca_file: Path = Field(description="CA certificate that signed the broker's certificate.")
    cert_file: Path | None = Field(default=None, description="Client certificate (its CN is the MQTT identity).")
    key_file: Path | None = Field(default=None, description="Private key of the client certificate.")
    min_version: Literal["1.2", "1.3"] = Field(default="1.2", description="Lowest TLS version accepted.")

    @model_validator(mode="after")
    def _cert_needs_key(self) -> "TlsSettings":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        for label, path in (("ca_file", self.ca_file), ("cert_file", self.cert_file), ("key_file", self.key_file)):
            if path is not None and not path.is_file():
                raise ValueError(f"{label} {path} does not exist (run `emq-pki init` to create the PKI)")
        return self


class MqttSettings(StrictSettings):
    host: str = Field(default="localhost", description="Broker host name; must match a SAN of its certificate.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(default=8883, description="Broker TLS port.")
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None, description="MQTT client id; defaults to the component's identity. Fixed ids give persistent sessions."
    )
    tls: TlsSettings | None = Field(default=None, description="TLS settings; None means plaintext (refused by our broker).")
    username: str | None = Field(default=None, description="For password login (port 8884) instead of a client certificate.")
    password: SecretStr | None = Field(default=None, description="Password; prefer password_file or EMQ_..._PASSWORD.")
    password_file: Path | None = Field(default=None, description="File holding the password (Docker secrets style).")
    topic_prefix: str = Field(default=DEFAULT_PREFIX, description="First topic level(s) of every topic.")
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    reconnect_min_delay_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    reconnect_max_delay_s: Annotated[float, Field(gt=0, le=600)] = Field(
        default=5.0, description="Cap of the jittered exponential backoff: a client waits at most this long after the broker is back."
    )
    clean_start: bool = Field(default=True, description="False + session_expiry_s > 0 keeps subscriptions and queued QoS 1 messages across disconnects.")
    session_expiry_s: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    max_inflight: Annotated[int, Field(ge=1, le=65535)] = Field(default=100, description="QoS 1 messages in flight before paho queues.")
    max_packet_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=5 * 1024 * 1024, description="Largest packet to send; the broker's own limit (from CONNACK) applies too."
    )
    tcp_nodelay: bool = Field(default=True, description="Disable Nagle: it adds ~10 ms to every frame over TLS.")

    @model_validator(mode="after")
    def _check(self) -> "MqttSettings":
        check_prefix(self.topic_prefix)
        if self.reconnect_max_delay_s < self.reconnect_min_delay_s:
            raise ValueError("reconnect_max_delay_s must be >= reconnect_min_delay_s")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password needs a username")
        if self.password_file is not None and not self.password_file.is_file():
            raise ValueError(f"password_file {self.password_file} does not exist")
        return self

    def resolved_password(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return None


def apply_identity_defaults(settings: MqttSettings, pki_dir: Path, identity: str, client_id: str) -> MqttSettings:
    """Fill what a component left unset: the certificate `emq-pki` issued for ``identity`` and a fixed client id.

    Called by each component's config after validation, so a default install
    needs no MQTT settings at all; explicit TLS or password settings win.
    """
    if settings.tls is None and settings.username is None:
        settings.tls = TlsSettings(
            ca_file=pki_dir / "ca.crt",
            cert_file=pki_dir / "clients" / f"{identity}.crt",
            key_file=pki_dir / "clients" / f"{identity}.key",
        )
    if settings.client_id is None:
        settings.client_id = client_id
    return settings


def pki_mqtt_settings(pki_dir: Path, identity: str, *, host: str = "localhost", port: int = 8883, **overrides) -> MqttSettings:
    """Settings for ``identity`` using the files ``emq-pki`` writes into ``pki_dir``."""
    tls = TlsSettings(
        ca_file=pki_dir / "ca.crt",
        cert_file=pki_dir / "clients" / f"{identity}.crt",
        key_file=pki_dir / "clients" / f"{identity}.key",
    )
    return MqttSettings(host=host, port=port, tls=tls, client_id=overrides.pop("client_id", identity), **overrides)


def default_pki_dir() -> Path:
    return Path(os.environ.get("EMQ_PKI_DIR", "var/pki"))
