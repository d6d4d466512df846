"""Shared fixtures: a real Mosquitto on free ports with a PKI generated for the run.

Every broker fixture renders the repository's own config (broker/), so the
tests exercise the configuration users run, not a test-only one.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from broker.config import BrokerSettings
from broker.identities import IdentityRegistry, Role, init_pki
from broker.pki import PkiPaths, issue_client_cert
from broker.runner import MosquittoProcess
from comms.mqtt import Availability, Message, MqttClient
from comms.settings import MqttSettings, TlsSettings, pki_mqtt_settings
from contract.topics import Topics

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
MEDIA = SHARED / "media"
DEVICES = ("cam-a", "cam-b")
# The broker makes each identity its client id, so every concurrent connection needs its own:
# named ingest workers, and second clients of the same role in one test.
EXTRA_IDENTITIES = {"ingest-1": Role.INGEST, "ingest-2": Role.INGEST, "monitor-2": Role.MONITOR, "webui-2": Role.WEBUI}
WAIT_S = 10.0

logging.getLogger("paho").setLevel(logging.WARNING)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def console_script(name: str) -> str:
    """Path of one of our console scripts in the running interpreter's environment."""
    script = Path(sys.executable).parent / name
    assert script.exists(), f"{script} missing: install the package (pip install -e .)"
    return str(script)


def component_env(prefix: str, settings: dict[str, object]) -> dict[str, str]:
    """The environment that configures one of our services: ``{"MQTT__PORT": 1}`` -> ``<prefix>MQTT__PORT=1``."""
    env = dict(os.environ)
    env.update({f"{prefix}{key.upper()}": str(value) for key, value in settings.items()})
    return env


def start_service(script: str, env: dict[str, str], log_path: Path, *arguments: str) -> subprocess.Popen:
    """One of our console scripts as a real process, its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen([console_script(script), *arguments], env=env, stdout=log, stderr=subprocess.STDOUT)


def media_file(name: str) -> Path:
    path = MEDIA / name
    if not path.exists():
        pytest.skip(f"{path} not found: the shared test media live beside the repo in ../shared/media")
    return path


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout``; for state without an event to wait on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Collector:
    """Collects messages from a subscription; waits on a condition, never sleeps blindly."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._condition = threading.Condition()

    def __call__(self, message: Message) -> None:
        with self._condition:
            self.messages.append(message)
            self._condition.notify_all()

    def wait_for(self, predicate: Callable[[list[Message]], bool], timeout: float = WAIT_S) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: predicate(self.messages), timeout)

    def wait_count(self, count: int, timeout: float = WAIT_S) -> list[Message]:
        if not self.wait_for(lambda messages: len(messages) >= count, timeout):
            raise AssertionError(f"expected {count} messages within {timeout} s, got {len(self.messages)}")
        return list(self.messages)

    def on(self, topic: str) -> list[Message]:
        with self._condition:
            return [message for message in self.messages if message.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [message.payload for message in self.on(topic)]


def subscribe_and_wait(client: MqttClient, topic_filter: str, collector: Collector | None = None) -> Collector:
    """Subscribe and wait for the SUBACK, so later publishes are sure to be routed to us."""
    collector = collector or Collector()
    delivery = client.subscribe(topic_filter, collector)
    assert delivery is not None and delivery.wait(WAIT_S), f"no SUBACK for {topic_filter}"
    return collector


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts (agents, ingest workers, servers); any still running are killed at teardown."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory) -> Path:
    """CA, broker certificate and identities: services, two devices, and the extra identities above."""
    root = tmp_path_factory.mktemp("pki")
    init_pki(root, devices=DEVICES)
    registry = IdentityRegistry(PkiPaths(root))
    for name, role in EXTRA_IDENTITIES.items():
        registry.ensure(name, role)
    registry.save()
    return root


@pytest.fixture(scope="session")
def foreign_pki_dir(tmp_path_factory) -> Path:
    """A second, unrelated CA with a client called like a real device."""
    root = tmp_path_factory.mktemp("foreign-pki")
    init_pki(root, devices=("cam-a",))
    return root


@pytest.fixture(scope="session")
def expired_identity(pki_dir: Path) -> str:
    """A device whose certificate expired yesterday (signed by the right CA)."""
    name = "cam-expired"
    paths = PkiPaths(pki_dir)
    registry = IdentityRegistry(paths)
    registry.ensure(name, Role.DEVICE, with_certificate=False)
    registry.save()
    now = datetime.now(timezone.utc)
    issue_client_cert(paths, name, not_before=now - timedelta(days=30), not_after=now - timedelta(days=1))
    return name


@pytest.fixture
def broker_settings(pki_dir: Path, tmp_path: Path) -> BrokerSettings:
    return BrokerSettings(
        pki_dir=pki_dir,
        state_dir=tmp_path / "broker",
        bind_address="127.0.0.1",
        tls_port=free_port(),
        password_port=free_port(),
        autosave_interval_s=1,
    )


@pytest.fixture
def broker(broker_settings: BrokerSettings) -> Iterator[MosquittoProcess]:
    process = MosquittoProcess(broker_settings).start()
    yield process
    process.stop()


@pytest.fixture
def topics() -> Topics:
    return Topics()


@pytest.fixture
def client_settings(broker: MosquittoProcess, pki_dir: Path) -> Callable[..., MqttSettings]:
    """Settings for an identity of the test PKI, pointing at the test broker."""

    def make(identity: str, **overrides) -> MqttSettings:
        overrides.setdefault("reconnect_min_delay_s", 0.1)
        overrides.setdefault("reconnect_max_delay_s", 1.0)
        overrides.setdefault("client_id", f"{identity}-{uuid.uuid4().hex[:8]}")
        overrides.setdefault("host", "localhost")
        return pki_mqtt_settings(pki_dir, identity, port=broker.settings.tls_port, **overrides)

    return make


@pytest.fixture
def mqtt_client(client_settings) -> Iterator[Callable[..., MqttClient]]:
    """Start project clients; every one is stopped at teardown."""
    started: list[MqttClient] = []

    def make(identity: str, *, availability: Availability | None = None, start: bool = True, manual_ack: bool = False, **overrides) -> MqttClient:
        """``start=False`` returns the client unstarted, to subscribe before connecting."""
        client = MqttClient(client_settings(identity, **overrides), availability=availability, manual_ack=manual_ack)
        started.append(client)
        if start:
            client.start()
            assert client.wait_connected(WAIT_S), f"{identity} did not connect: {client.last_error}"
        return client

    yield make
    for client in started:
        client.stop(announce_stopped=False, timeout=1)


def tls_settings_from(pki: Path, identity: str) -> TlsSettings:
    paths = PkiPaths(pki)
    return TlsSettings(ca_file=paths.ca_cert, cert_file=paths.client_cert(identity), key_file=paths.client_key(identity))
