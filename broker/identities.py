"""Who may talk to the broker, in which role: the registry behind certificates, passwords and ACLs.

``identities.json`` in the PKI folder lists every identity with its role. The
broker ACL is rendered from it (:mod:`broker.acl`), so adding a device is one
command (``emq-pki add cam-2``) and revoking one is another.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from broker.pki import (
    PkiPaths,
    client_cert_is_usable,
    ensure_ca,
    ensure_server_cert,
    issue_client_cert,
    load_cert,
    write_atomic,
    write_crl,
)
from contract.topics import RESERVED_IDENTITIES, check_device_id


class Role(str, Enum):
    DEVICE = "device"     # an edge agent: publishes its own data, reads its own commands/models
    INGEST = "ingest"     # cloud ingest: reads all device data
    WEBUI = "webui"       # dashboard: reads data, publishes commands only
    RETRAIN = "retrain"   # retraining job: the only writer of model releases
    MONITOR = "monitor"   # read-only operator (mosquitto_sub)
    HOMEASSISTANT = "homeassistant"  # Home Assistant: reads device data and discovery configs


# The service identities created by `emq-pki init`, named after their role.
SERVICE_IDENTITIES = (Role.INGEST, Role.WEBUI, Role.RETRAIN, Role.MONITOR, Role.HOMEASSISTANT)


class Identity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    serial: str | None = Field(default=None, description="Hex serial of the current client certificate.")
    revoked_serials: list[str] = Field(default_factory=list)
    revoked: bool = False
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


class IdentityFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identities: dict[str, Identity] = Field(default_factory=dict)


class IdentityError(ValueError):
    """A request the registry refuses (bad name, wrong role, unknown identity)."""


def check_identity_name(name: str, role: Role) -> str:
    check_device_id(name)
    if role is Role.DEVICE and (name in RESERVED_IDENTITIES or name.split("-", 1)[0] in RESERVED_IDENTITIES):
        # `ingest-2` is how a second ingest worker is named; a device must not take such a name.
        raise IdentityError(f"{name!r} is reserved for a service; choose another device id")
    return name


class IdentityRegistry:
    """Load, change and save ``identities.json``; issue certificates through :mod:`broker.pki`."""

    def __init__(self, paths: PkiPaths) -> None:
        self.paths = paths
        self.data = self._load()

    def _load(self) -> IdentityFile:
        if not self.paths.identities.exists():
            return IdentityFile()
        return IdentityFile.model_validate_json(self.paths.identities.read_text())

    def save(self) -> None:
        write_atomic(self.paths.identities, self.data.model_dump_json(indent=2).encode())

    # -- queries --------------------------------------------------------------
    def get(self, name: str) -> Identity | None:
        return self.data.identities.get(name)

    def active(self) -> dict[str, Identity]:
        return {name: identity for name, identity in self.data.identities.items() if not identity.revoked}

    def revoked_serials(self) -> list[int]:
        serials = []
        for identity in self.data.identities.values():
            serials += [int(serial, 16) for serial in identity.revoked_serials]
        return serials

    # -- changes --------------------------------------------------------------
    def ensure(self, name: str, role: Role, *, with_certificate: bool = True) -> bool:
        """Register ``name`` and give it a valid certificate; True if anything changed."""
        check_identity_name(name, role)
        identity = self.data.identities.get(name)
        if identity is not None and identity.role is not role:
            raise IdentityError(f"{name!r} exists with role {identity.role.value}, not {role.value}")
        if identity is not None and identity.revoked:
            raise IdentityError(f"{name!r} was revoked; choose a new name")
        changed = identity is None
        identity = identity or Identity(role=role)
        if with_certificate and not client_cert_is_usable(self.paths, name):
            if identity.serial:
                identity.revoked_serials.append(identity.serial)  # the replaced cert must stop working
            identity.serial = format(issue_client_cert(self.paths, name).serial_number, "x")
            changed = True
        self.data.identities[name] = identity
        return changed

    def revoke(self, name: str) -> None:
        identity = self.data.identities.get(name)
        if identity is None:
            raise IdentityError(f"no identity named {name!r}")
        if identity.serial:
            identity.revoked_serials.append(identity.serial)
        identity.revoked = True
        self.paths.client_key(name).unlink(missing_ok=True)
        if self._has_password(name):
            _run_mosquitto_passwd(["-D", str(self.paths.passwords), name])

    def _has_password(self, name: str) -> bool:
        if not self.paths.passwords.exists():
            return False
        return any(line.split(":", 1)[0] == name for line in self.paths.passwords.read_text().splitlines())

    def set_password(self, name: str, role: Role, password: str) -> None:
        """Register ``name`` for password login (for clients that cannot hold a certificate)."""
        self.ensure(name, role, with_certificate=False)
        if not self.paths.passwords.exists():
            write_atomic(self.paths.passwords, b"", mode=0o600)
        _run_mosquitto_passwd(["-b", str(self.paths.passwords), name, password])


def _run_mosquitto_passwd(arguments: list[str]) -> None:
    binary = shutil.which("mosquitto_passwd")
    if binary is None:
        raise IdentityError("mosquitto_passwd not found: install the 'mosquitto' package")
    completed = subprocess.run([binary, *arguments], capture_output=True, text=True, timeout=30)
    if completed.returncode != 0:
        raise IdentityError(f"mosquitto_passwd failed: {completed.stderr.strip() or completed.stdout.strip()}")


def init_pki(
    root: Path,
    *,
    devices: list[str] | tuple[str, ...] = (),
    hosts: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """Create or complete the PKI: CA, broker cert, service and device identities, CRL.

    Safe to re-run: existing valid material is kept. Returns what changed.
    """
    paths = PkiPaths(root)
    changes = []
    if not paths.ca_cert.exists():
        changes.append("created CA")
    ensure_ca(paths)
    if ensure_server_cert(paths, hosts):
        changes.append("issued broker certificate")
    registry = IdentityRegistry(paths)
    for role in SERVICE_IDENTITIES:
        if registry.ensure(role.value, role):
            changes.append(f"issued {role.value} certificate")
    for device in devices:
        if registry.ensure(device, Role.DEVICE):
            changes.append(f"issued device certificate {device}")
    registry.save()
    write_crl(paths, registry.revoked_serials())
    return changes


def describe(paths: PkiPaths) -> list[str]:
    """One line per identity: name, role, state, certificate expiry."""
    registry = IdentityRegistry(paths)
    lines = []
    for name, identity in sorted(registry.data.identities.items()):
        cert_path = paths.client_cert(name)
        expiry = load_cert(cert_path).not_valid_after_utc.date().isoformat() if cert_path.exists() else "-"
        state = "revoked" if identity.revoked else "active"
        lines.append(f"{name:24} {identity.role.value:8} {state:8} cert until {expiry}")
    return lines
