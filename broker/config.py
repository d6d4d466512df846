"""Broker settings and the rendering of mosquitto.conf + ACL from them."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from string import Template
from typing import Annotated

from pydantic import Field, model_validator

from broker.acl import render_acl
from broker.identities import IdentityRegistry
from broker.pki import PkiPaths, write_atomic
from common.config import StrictSettings
from contract.topics import DEFAULT_PREFIX, Topics, check_prefix

TEMPLATE_DIR = Path(__file__).parent
MIB = 1024 * 1024

Port = Annotated[int, Field(ge=1, le=65535)]


class BrokerSettings(StrictSettings):
    pki_dir: Path = Field(default=Path("var/pki"), description="Folder written by `emq-pki init`.")
    state_dir: Path = Field(default=Path("var/broker"), description="Rendered config, ACL, persistence and log.")
    bind_address: str = Field(default="0.0.0.0", description="Address the listeners bind; 127.0.0.1 for a local-only broker.")
    tls_port: Port = Field(default=8883, description="TLS listener for client certificates.")
    password_port: Port | None = Field(default=8884, description="TLS listener for username/password clients; None disables it.")
    topic_prefix: str = DEFAULT_PREFIX
    autosave_interval_s: Annotated[int, Field(ge=1, le=3600)] = Field(default=10, description="Persistence autosave period (Mosquitto's default is 1800 s).")
    persistent_client_expiration: str = Field(default="14d", pattern=r"^\d+[hdwmy]$")
    max_packet_size: Annotated[int, Field(ge=64 * 1024, le=256 * MIB)] = 5 * MIB
    max_queued_messages: Annotated[int, Field(ge=0)] = Field(default=10000, description="Per client; beyond it Mosquitto drops silently.")
    max_queued_bytes: Annotated[int, Field(ge=0)] = 512 * MIB
    max_inflight_messages: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=1000, description="QoS 1 messages in flight to one client; a consumer that acks after its commit needs a deep window."
    )
    log_dest: str = Field(
        default="file", pattern=r"^(stdout|stderr|file( \S.*)?)$",
        description="'file' (mosquitto.log in the state folder), 'file <path>', 'stdout' or 'stderr'. Mosquitto writes "
        "each line through to a file; its stdout into a file or pipe is block-buffered, so a killed broker's last lines are lost.",
    )

    @model_validator(mode="after")
    def _check(self) -> "BrokerSettings":
        check_prefix(self.topic_prefix)
        if self.password_port == self.tls_port:
            raise ValueError("password_port must differ from tls_port")
        return self

    @property
    def conf_path(self) -> Path:
        return self.state_dir / "mosquitto.conf"

    @property
    def acl_path(self) -> Path:
        return self.state_dir / "acl"

    @property
    def persistence_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def log_file(self) -> Path | None:
        """Where Mosquitto writes its log, or None when it logs to stdout/stderr."""
        if self.log_dest == "file":
            return self.state_dir / "mosquitto.log"
        if self.log_dest.startswith("file "):
            return Path(self.log_dest.removeprefix("file ").strip())
        return None


def _run_as_user() -> str:
    # Started as root, Mosquitto drops to the 'mosquitto' user and then cannot
    # read our 0600 keys; keep the identity that owns the PKI.
    return f"user {getpass.getuser()}" if hasattr(os, "getuid") else ""


def render_conf(settings: BrokerSettings) -> str:
    paths = PkiPaths(settings.pki_dir.resolve())
    values = {
        "persistence_dir": settings.persistence_dir.resolve(),
        "autosave_interval_s": settings.autosave_interval_s,
        "persistent_client_expiration": settings.persistent_client_expiration,
        "max_packet_size": settings.max_packet_size,
        "max_queued_messages": settings.max_queued_messages,
        "max_queued_bytes": settings.max_queued_bytes,
        "max_inflight_messages": settings.max_inflight_messages,
        "log_dest": f"file {settings.log_file.resolve()}" if settings.log_file else settings.log_dest,
        "user_line": _run_as_user(),
        "tls_port": settings.tls_port,
        "password_port": settings.password_port,
        "bind_address": settings.bind_address,
        "ca_file": paths.ca_cert,
        "server_cert": paths.server_cert,
        "server_key": paths.server_key,
        "crl_file": paths.crl,
        "acl_file": settings.acl_path.resolve(),
        "password_file": paths.passwords,
    }
    password_block = ""
    if settings.password_port is not None:
        password_block = Template((TEMPLATE_DIR / "userpass_listener.tmpl").read_text()).substitute(values)
    values["password_listener"] = password_block
    return Template((TEMPLATE_DIR / "mosquitto.conf.tmpl").read_text()).substitute(values)


def render_all(settings: BrokerSettings) -> Path:
    """Write mosquitto.conf and the ACL into the state folder; returns the conf path.

    Needs an initialised PKI (``emq-pki init``).
    """
    paths = PkiPaths(settings.pki_dir)
    for required in (paths.ca_cert, paths.server_cert, paths.server_key, paths.crl):
        if not required.exists():
            raise FileNotFoundError(f"{required} is missing: run `emq-pki init --dir {settings.pki_dir}` first")
    if settings.password_port is not None and not paths.passwords.exists():
        write_atomic(paths.passwords, b"", mode=0o600)  # no password users yet
    settings.persistence_dir.mkdir(parents=True, exist_ok=True)
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
    registry = IdentityRegistry(paths)
    write_atomic(settings.acl_path, render_acl(Topics(settings.topic_prefix), registry.active()).encode())
    write_atomic(settings.conf_path, render_conf(settings).encode())
    return settings.conf_path
