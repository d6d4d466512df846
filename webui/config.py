"""The web UI's one typed config: TOML file + ``EMQ_WEBUI__*`` environment overrides.

Everything has a default that works on one machine after ``scripts/setup.sh``::

    [server]
    host = "127.0.0.1"
    port = 8080
    [store]
    url = "sqlite:///var/cloud/emotion.db"
    data_dir = "var/cloud/data"
    [auth]
    users_file = "var/webui/users.json"   # managed by `emq-webui create-user`

``emq-webui --print-config`` shows the effective values (secrets hidden).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from common.config import StrictSettings
from comms.settings import MqttSettings, apply_identity_defaults

ENV_PREFIX = "EMQ_WEBUI__"
ROLES = ("viewer", "labeller", "admin")
Role = Literal["viewer", "labeller", "admin"]
USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class ServerSettings(StrictSettings):
    host: str = Field(default="127.0.0.1", description="Address to listen on; 0.0.0.0 for every interface (put HTTPS in front).")
    port: Annotated[int, Field(ge=0, le=65535)] = Field(default=8080, description="TCP port; 0 picks a free one (printed at start).")
    max_streams: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=32, description="Live streams (browser tabs) served at once; each holds one server thread while open."
    )
    request_threads: Annotated[int, Field(ge=2, le=200)] = Field(
        default=8, description="Threads kept free for pages and API calls on top of the streams."
    )
    connection_limit: Annotated[int, Field(ge=10, le=10000)] = Field(default=200, description="Open HTTP connections at most.")
    client_buffer_bytes: Annotated[int, Field(ge=64 * 1024)] = Field(
        default=2 * 1024 * 1024, description="Unsent bytes buffered per connection before its stream waits (and then skips frames)."
    )
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(default=9311, description="Prometheus /metrics port (no login; loopback by default); 0 disables it.")
    metrics_address: str = Field(default="127.0.0.1", description="Address the metrics server binds.")
    trusted_proxy: str | None = Field(
        default=None, description="Address of a reverse proxy whose X-Forwarded-* headers are believed (e.g. 127.0.0.1)."
    )

    @property
    def threads(self) -> int:
        return self.max_streams + self.request_threads

    @property
    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


class UserEntry(StrictSettings):
    """A user given in the config or environment (``EMQ_WEBUI__AUTH__USERS__ALICE__ROLE=admin``)."""

    role: Role = "viewer"
    password_hash: str = Field(min_length=20, description="werkzeug hash from `emq-webui hash-password`.")


class AuthSettings(StrictSettings):
    users_file: Path = Field(default=Path("var/webui/users.json"), description="Users managed by `emq-webui create-user`.")
    users: dict[str, UserEntry] = Field(default_factory=dict, description="Extra users from config/env; a name may not also be in users_file.")
    secret_key: SecretStr | None = Field(default=None, description="Signs session cookies; default: secret_key_file.")
    secret_key_file: Path = Field(default=Path("var/webui/secret_key"), description="Created (mode 0600) on first start if missing.")
    session_lifetime_s: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] = Field(default=12 * 3600, description="Log in again after this.")
    secure_cookies: bool = Field(default=False, description="Mark cookies Secure (HTTPS only). Turn on behind an HTTPS proxy.")
    sessions_file: Path | None = Field(
        default=None, description="Open sessions (SQLite, mode 0600); default: sessions.db next to users_file."
    )
    login_free_attempts: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=5, description="Failed logins per address (and per user name from one address) before each try must wait."
    )
    login_first_delay_s: Annotated[float, Field(gt=0, le=60)] = Field(default=1.0, description="The first wait; it doubles with every further failure…")
    login_max_delay_s: Annotated[float, Field(gt=0, le=3600)] = Field(default=60.0, description="…up to this; an account is never locked.")
    login_forget_after_s: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = Field(
        default=900, description="Failures are forgotten after this long without a new one."
    )

    @property
    def sessions_path(self) -> Path:
        return self.sessions_file or self.users_file.with_name("sessions.db")

    @field_validator("users")
    @classmethod
    def _user_names_valid(cls, users: dict[str, UserEntry]) -> dict[str, UserEntry]:
        for name in users:
            if not re.fullmatch(USER_NAME_PATTERN, name):
                raise ValueError(f"invalid user name {name!r}: 1-64 of A-Z a-z 0-9 _ . @ -")
        return users


class StoreSettings(StrictSettings):
    url: str = Field(default="sqlite:///var/cloud/emotion.db", description="The cloud store the ingest service fills.")
    data_dir: Path = Field(default=Path("var/cloud/data"), description="The ingest's data folder; stored frame and crop paths are relative to it.")
    schema_wait_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=30.0, description="At start, wait this long for the ingest to create the database schema (it owns it)."
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("use sqlite:///path.db or postgresql://user@host/db")
        return url


class LiveSettings(StrictSettings):
    max_devices: Annotated[int, Field(ge=1, le=10000)] = Field(default=64, description="Devices kept live; the least recently seen is dropped beyond this.")
    keepalive_s: Annotated[float, Field(gt=0, le=120)] = Field(default=15.0, description="Comment sent on idle streams so proxies and dead clients are noticed.")
    stream_max_age_s: Annotated[float, Field(ge=10, le=24 * 3600)] = Field(
        default=3600.0, description="Streams end after this and the browser reconnects (re-checking its login)."
    )
    stale_after_s: Annotated[float, Field(gt=0)] = Field(default=30.0, description="An online device silent this long is shown as stale.")


class CommandSettings(StrictSettings):
    ack_timeout_s: Annotated[float, Field(gt=0, le=60)] = Field(default=5.0, description="Wait this long for the broker to accept a command.")
    keep_replies: Annotated[int, Field(ge=1, le=10000)] = Field(default=200, description="Recent commands and replies remembered.")


class WebUIConfig(StrictSettings):
    pki_dir: Path = Field(default=Path("var/pki"), description="Where `emq-pki` put ca.crt and clients/webui.crt/.key.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    live: LiveSettings = Field(default_factory=LiveSettings)
    commands: CommandSettings = Field(default_factory=CommandSettings)

    @model_validator(mode="after")
    def _fill_derived(self) -> "WebUIConfig":
        # Live data needs no persistent session; a unique client id lets several
        # dashboards (or a restart racing the old process) coexist.
        apply_identity_defaults(self.mqtt, self.pki_dir, "webui", client_id=f"webui-{uuid.uuid4().hex[:12]}")
        return self


class AuthOnlyConfig(StrictSettings):
    """Just the ``[auth]`` section, for the user commands: they must work before the PKI exists.

    The other sections are left unchecked here; ``emq-webui serve`` checks them.
    """

    model_config = ConfigDict(extra="ignore", validate_default=True)

    auth: AuthSettings = Field(default_factory=AuthSettings)
