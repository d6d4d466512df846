"""A small private PKI for the broker and its clients (``cryptography``, ECDSA P-256).

Files under the PKI folder (nothing here is ever committed)::

    ca.crt  ca.key            the project's certificate authority
    server.crt server.key     the broker's certificate (SAN: localhost, 127.0.0.1, ::1, extra hosts)
    clients/<id>.crt/.key     one client certificate per identity, CN = identity
    crl.pem                   revoked client certificates (Mosquitto ``crlfile``)
    identities.json           who exists, their role, serial, revocation (see broker.identities)

Every write is atomic and private keys are 0600, so an interrupted run or a
re-run never leaves a half-written key behind.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 825
CLIENT_DAYS = 730
CRL_DAYS = 3650
RENEW_BEFORE = timedelta(days=30)
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class PkiPaths:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    @property
    def identities(self) -> Path:
        return self.root / "identities.json"

    @property
    def passwords(self) -> Path:
        return self.root / "passwd"

    def client_cert(self, identity: str) -> Path:
        return self.root / "clients" / f"{identity}.crt"

    def client_key(self, identity: str) -> Path:
        return self.root / "clients" / f"{identity}.key"


# -- file helpers -----------------------------------------------------------
def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a temp file + rename so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def save_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_atomic(path, pem, mode=0o600)


def save_cert(cert: x509.Certificate, path: Path) -> None:
    write_atomic(path, cert.public_bytes(serialization.Encoding.PEM))


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "emotion-mqtt"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _now() -> datetime:
    return datetime.now(timezone.utc)


# -- certificate authority ----------------------------------------------------
def create_ca(paths: PkiPaths, common_name: str = "emotion-mqtt CA") -> x509.Certificate:
    key = new_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    save_key(key, paths.ca_key)
    save_cert(cert, paths.ca_cert)
    return cert


def ensure_ca(paths: PkiPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load the CA, creating it on first use. An existing CA is never replaced."""
    if not (paths.ca_cert.exists() and paths.ca_key.exists()):
        create_ca(paths)
    return load_cert(paths.ca_cert), load_key(paths.ca_key)


def _signed(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    not_before: datetime,
    not_after: datetime,
    alt_names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    ca_cert, ca_key = ca
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


# -- broker certificate -------------------------------------------------------
def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def server_names(extra_hosts: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Names the broker certificate covers: loopback plus the configured hosts, deduplicated."""
    return list(dict.fromkeys([*DEFAULT_SERVER_NAMES, *extra_hosts]))


def _cert_names(cert: x509.Certificate) -> set[str]:
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(name) for name in alt.get_values_for_type(x509.DNSName)} | {
        str(address) for address in alt.get_values_for_type(x509.IPAddress)
    }


def _needs_renewal(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - _now() < RENEW_BEFORE


def ensure_server_cert(paths: PkiPaths, hosts: list[str] | tuple[str, ...] = ()) -> bool:
    """(Re)issue the broker certificate if missing, expiring, or not covering ``hosts``.

    Returns True when a new certificate was written.
    """
    wanted = server_names(hosts)
    if paths.server_cert.exists() and paths.server_key.exists():
        current = load_cert(paths.server_cert)
        if set(wanted) <= _cert_names(current) and not _needs_renewal(current):
            return False
    key = new_key()
    now = _now()
    cert = _signed(
        ensure_ca(paths), wanted[0], key, ExtendedKeyUsageOID.SERVER_AUTH,
        now - timedelta(minutes=5), now + timedelta(days=SERVER_DAYS), [_general_name(host) for host in wanted],
    )
    save_key(key, paths.server_key)
    save_cert(cert, paths.server_cert)
    return True


# -- client certificates --------------------------------------------------------
def issue_client_cert(
    paths: PkiPaths,
    identity: str,
    *,
    days: int = CLIENT_DAYS,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    """Issue a client certificate whose CN is ``identity`` (Mosquitto's username)."""
    key = new_key()
    start = not_before or _now() - timedelta(minutes=5)
    end = not_after or _now() + timedelta(days=days)
    cert = _signed(ensure_ca(paths), identity, key, ExtendedKeyUsageOID.CLIENT_AUTH, start, end)
    save_key(key, paths.client_key(identity))
    save_cert(cert, paths.client_cert(identity))
    return cert


def client_cert_is_usable(paths: PkiPaths, identity: str) -> bool:
    cert_path, key_path = paths.client_cert(identity), paths.client_key(identity)
    return cert_path.exists() and key_path.exists() and not _needs_renewal(load_cert(cert_path))


def write_crl(paths: PkiPaths, revoked_serials: list[int]) -> None:
    """Write the CRL listing ``revoked_serials``; Mosquitto needs one even when empty."""
    ca_cert, ca_key = ensure_ca(paths)
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=CRL_DAYS))
    )
    for serial in sorted(set(revoked_serials)):
        revoked = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        builder = builder.add_revoked_certificate(revoked)
    crl = builder.sign(ca_key, hashes.SHA256())
    write_atomic(paths.crl, crl.public_bytes(serialization.Encoding.PEM))
