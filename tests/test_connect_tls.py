"""Connect and TLS: who gets in, who is refused."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest
from cryptography import x509

from broker.identities import IdentityRegistry, Role
from broker.pki import PkiPaths, load_cert, write_crl
from comms.mqtt import MqttClient
from comms.settings import MqttSettings, TlsSettings
from tests.conftest import WAIT_S, console_script, tls_settings_from, wait_until

REFUSAL_WAIT_S = 3.0
# An MQTT 5 CONNECT with client id "x" and no credentials.
PLAIN_CONNECT = bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([5, 0x02, 0, 30, 0, 0, 1]) + b"x"


def connects(settings: MqttSettings) -> tuple[bool, str | None]:
    client = MqttClient(settings)
    client.start()
    try:
        # A refusal shows up as last_error (TLS alert, CONNACK failure); stop waiting then.
        wait_until(lambda: client.connected or client.last_error is not None, REFUSAL_WAIT_S)
        return client.connected, client.last_error
    finally:
        client.stop(announce_stopped=False, timeout=1)


def test_valid_client_certificate_connects(client_settings):
    connected, error = connects(client_settings("cam-a"))
    assert connected, error


def test_plaintext_mqtt_is_refused(broker):
    """A plaintext CONNECT to the TLS port never gets a CONNACK."""
    with socket.create_connection(("127.0.0.1", broker.settings.tls_port), timeout=WAIT_S) as sock:
        sock.sendall(PLAIN_CONNECT)
        sock.settimeout(REFUSAL_WAIT_S)
        try:
            answer = sock.recv(16)
        except (ConnectionResetError, TimeoutError, socket.timeout):
            answer = b""
    assert not answer.startswith(b"\x20"), "broker answered a plaintext CONNECT with a CONNACK"


def test_no_listener_without_tls(broker):
    """Only the two TLS listeners exist: the plaintext default port is not opened by our config."""
    conf = broker.settings.conf_path.read_text()
    listeners = [line for line in conf.splitlines() if line.startswith("listener ")]
    assert len(listeners) == 2
    assert conf.count("tls_version tlsv1.2") == 2
    assert "allow_anonymous true" not in conf


def test_client_without_certificate_is_refused(client_settings, pki_dir):
    settings = client_settings("cam-a").model_copy(update={"tls": TlsSettings(ca_file=PkiPaths(pki_dir).ca_cert)})
    connected, _ = connects(settings)
    assert not connected


def test_certificate_from_another_ca_is_refused(client_settings, pki_dir, foreign_pki_dir):
    foreign = tls_settings_from(foreign_pki_dir, "cam-a").model_copy(update={"ca_file": PkiPaths(pki_dir).ca_cert})
    connected, _ = connects(client_settings("cam-a").model_copy(update={"tls": foreign}))
    assert not connected


def test_expired_certificate_is_refused(client_settings, expired_identity):
    connected, _ = connects(client_settings(expired_identity))
    assert not connected


def test_revoked_certificate_is_refused(broker, client_settings, pki_dir):
    paths = PkiPaths(pki_dir)
    registry = IdentityRegistry(paths)
    registry.ensure("cam-revoked", Role.DEVICE)
    registry.save()
    settings = client_settings("cam-revoked")
    tls_copy = settings.tls  # the files stay on disk for the attempt after revocation
    key_bytes = paths.client_key("cam-revoked").read_bytes()
    registry.revoke("cam-revoked")
    registry.save()
    write_crl(paths, registry.revoked_serials())
    paths.client_key("cam-revoked").write_bytes(key_bytes)
    broker.restart()  # Mosquitto reads the CRL at start-up
    connected, _ = connects(settings.model_copy(update={"tls": tls_copy}))
    assert not connected


def test_broker_certificate_must_match_host_name(client_settings):
    """The client verifies the broker: 127.0.0.2 is not in the certificate's SAN."""
    connected, _ = connects(client_settings("cam-a", host="127.0.0.2"))
    assert not connected


def test_client_refuses_a_broker_from_another_ca(client_settings, foreign_pki_dir):
    settings = client_settings("cam-a")
    untrusting = settings.tls.model_copy(update={"ca_file": PkiPaths(foreign_pki_dir).ca_cert})
    connected, _ = connects(settings.model_copy(update={"tls": untrusting}))
    assert not connected


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_below_1_2_is_refused(broker, pki_dir):
    context = ssl.create_default_context(cafile=str(PkiPaths(pki_dir).ca_cert))
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", broker.settings.tls_port), timeout=WAIT_S) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname="localhost")


@pytest.fixture
def password_user(pki_dir, broker):
    registry = IdentityRegistry(PkiPaths(pki_dir))
    registry.set_password("cam-pw", Role.DEVICE, "correct horse battery")
    registry.save()
    broker.reload()
    return "cam-pw"


def password_settings(broker, pki_dir, username: str, password: str) -> MqttSettings:
    return MqttSettings(
        host="localhost",
        port=broker.settings.password_port,
        client_id=f"{username}-client",
        tls=TlsSettings(ca_file=PkiPaths(pki_dir).ca_cert),
        username=username,
        password=password,
        reconnect_min_delay_s=0.1,
        reconnect_max_delay_s=1,
    )


def test_password_login_works_on_the_password_listener(broker, pki_dir, password_user):
    connected, error = connects(password_settings(broker, pki_dir, password_user, "correct horse battery"))
    assert connected, error


def test_wrong_password_is_refused(broker, pki_dir, password_user):
    connected, error = connects(password_settings(broker, pki_dir, password_user, "wrong password!"))
    assert not connected
    assert error and "refused" in error


def test_pki_init_is_idempotent(tmp_path):
    """Re-running `emq-pki init` keeps every key and certificate."""
    command = [console_script("emq-pki"), "--dir", str(tmp_path), "init", "--device", "cam-1"]
    first = subprocess.run(command, capture_output=True, text=True, check=True)
    snapshot = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and path.suffix in (".crt", ".key")}
    second = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "issued device certificate cam-1" in first.stdout
    assert "nothing changed" in second.stdout
    assert snapshot == {path: path.read_bytes() for path in snapshot}
    assert oct(PkiPaths(tmp_path).ca_key.stat().st_mode & 0o777) == "0o600"


def test_pki_init_adds_new_host_names(tmp_path):
    subprocess.run([console_script("emq-pki"), "--dir", str(tmp_path), "init"], check=True, capture_output=True)
    result = subprocess.run([console_script("emq-pki"), "--dir", str(tmp_path), "init", "--host", "broker.example.org"], capture_output=True, text=True, check=True)
    assert "issued broker certificate" in result.stdout
    alt_names = load_cert(PkiPaths(tmp_path).server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "broker.example.org" in alt_names.value.get_values_for_type(x509.DNSName)


def test_reserved_names_cannot_be_devices(tmp_path):
    result = subprocess.run([console_script("emq-pki"), "--dir", str(tmp_path), "add", "monitor"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "reserved" in result.stderr
