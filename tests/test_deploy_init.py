"""The compose `init` script, the broker command and the healthchecks, run for real on this machine.

No Docker engine here, so the containers' mount points are mapped onto
temporary folders: the init script runs with the `init` service's own
environment (from docker-compose.yml and deploy/.env.example), Mosquitto runs
the `broker` service's command on what it rendered, and the broker's
healthcheck command must then succeed against it.
"""

from __future__ import annotations

import getpass
import http.server
import json
import importlib.util
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from broker.pki import PkiPaths, load_cert
from broker.runner import wait_for_port
from tests.conftest import free_port
from tests.test_deploy_support import (
    REPO_ROOT,
    VENV_BIN,
    env_example,
    environment_of,
    resolved_service,
    service_argv,
)

DEPLOY_SCRIPTS = REPO_ROOT / "deploy" / "docker"
IMAGE_DEPLOY_DIR = "/opt/emq/deploy/"
RUN_TIMEOUT_S = 60
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def needs(*programs: str) -> None:
    missing = [program for program in programs if shutil.which(program) is None and not Path("/usr/sbin", program).exists()]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install mosquitto mosquitto-clients)")


def program_path(program: str) -> str:
    return shutil.which(program) or str(Path("/usr/sbin", program))


def to_local(argument: str, mounts: dict[str, Path]) -> str:
    """Rewrite container paths (/pki/…, /broker/…, /opt/emq/deploy/…) to this machine's folders."""
    if argument.startswith(IMAGE_DEPLOY_DIR):
        return str(DEPLOY_SCRIPTS / argument[len(IMAGE_DEPLOY_DIR):])
    for container_path, local in mounts.items():
        if argument == container_path or argument.startswith(container_path + "/"):
            return str(local) + argument[len(container_path):]
    return argument


class InitRun:
    """The init service's environment on local folders; each call to run() runs the script once."""

    def __init__(self, root: Path) -> None:
        self.pki_dir, self.state_dir = root / "pki", root / "broker"
        self.mounts = {"/pki": self.pki_dir, "/broker": self.state_dir}
        self.tls_port, self.password_port = free_port(), free_port()
        self.argv = [to_local(argument, self.mounts) for argument in service_argv(resolved_service("init"))]
        self.environment = self._environment()

    def _environment(self) -> dict[str, str]:
        service_environment = {name: to_local(value, self.mounts) for name, value in environment_of(resolved_service("init")).items()}
        return os.environ | service_environment | {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            # Container ports are fixed (8883/8884); here they must be free ones, on loopback.
            "EMQ_BROKER__BIND_ADDRESS": "127.0.0.1",
            "EMQ_BROKER__TLS_PORT": str(self.tls_port),
            "EMQ_BROKER__PASSWORD_PORT": str(self.password_port),
            # In compose the broker runs as uid 1883 and ignores the rendered `user` line;
            # here Mosquitto runs as us, so the line must name us (else root would drop to `mosquitto`).
            "USER": getpass.getuser(),
            "LOGNAME": getpass.getuser(),
        }

    def run(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv, env=self.environment, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> InitRun:
    """One init run shared by the module (each costs ~1.5 s of interpreter start-ups); tests only read it."""
    needs("sh")
    init = InitRun(tmp_path_factory.mktemp("compose-volumes"))
    completed = init.run()
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return init


@pytest.fixture
def running_broker(initialised: InitRun) -> Iterator[InitRun]:
    needs("mosquitto")
    argv = [to_local(argument, initialised.mounts) for argument in service_argv(resolved_service("broker"))]
    argv[0] = program_path(argv[0])
    log = (initialised.state_dir / "test-broker.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", initialised.tls_port, 10, process)
        yield initialised
    finally:
        process.terminate()
        process.wait(10)
        log.close()


# -- the init script ------------------------------------------------------------------------------
def test_init_renders_a_config_with_the_container_paths(initialised):
    conf = (initialised.state_dir / "mosquitto.conf").read_text()
    pki = PkiPaths(initialised.pki_dir)
    for line in (f"cafile {pki.ca_cert}", f"certfile {pki.server_cert}", f"keyfile {pki.server_key}",
                 f"crlfile {pki.crl}", f"acl_file {initialised.state_dir / 'acl'}", f"persistence_location {initialised.state_dir / 'data'}/"):
        assert line in conf.splitlines(), f"{line!r} missing from the rendered config"


def test_init_certificate_covers_the_compose_and_public_names(initialised):
    certificate = load_cert(PkiPaths(initialised.pki_dir).server_cert)
    names = set(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    assert {"broker", "localhost", env_example()["EMQ_PUBLIC_HOST"]} <= names


def test_init_creates_the_service_and_device_identities(initialised):
    pki = PkiPaths(initialised.pki_dir)
    for identity in ("ingest", "webui", "retrain", "monitor", env_example()["EMQ_EDGE_DEVICE_ID"]):
        assert pki.client_cert(identity).exists() and pki.client_key(identity).exists(), identity
    acl = (initialised.state_dir / "acl").read_text()
    assert f"user {env_example()['EMQ_EDGE_DEVICE_ID']}" in acl.splitlines()


def test_init_is_idempotent(initialised):
    pki = PkiPaths(initialised.pki_dir)
    before = pki.ca_cert.read_bytes(), pki.client_key("ingest").read_bytes()
    completed = initialised.run()
    assert completed.returncode == 0, completed.stderr
    assert "nothing changed" in completed.stdout
    assert (pki.ca_cert.read_bytes(), pki.client_key("ingest").read_bytes()) == before


@pytest.mark.skipif(not IS_ROOT, reason="ownership is only assigned when the script runs as root (as in compose)")
def test_init_gives_each_key_to_its_reader(initialised):
    environment = initialised.environment
    broker_uid, service_uid = int(environment["EMQ_INIT_BROKER_UID"]), int(environment["EMQ_INIT_SERVICE_UID"])
    pki = PkiPaths(initialised.pki_dir)

    def owner(path: Path) -> tuple[int, int, int]:
        status = path.stat()
        return status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)

    assert owner(pki.ca_key) == (0, 0, 0o600), "the CA key must stay root-only"
    assert owner(pki.server_key)[:2] == (broker_uid, broker_uid)
    assert owner(pki.client_key("ingest")) == (service_uid, service_uid, 0o600)
    assert owner(pki.client_key("monitor")) == (service_uid, broker_uid, 0o640)
    assert owner(pki.ca_cert)[2] & 0o004, "certificates stay world-readable"
    assert owner(initialised.state_dir / "mosquitto.conf")[0] == broker_uid
    assert owner(initialised.state_dir / "data")[0] == broker_uid


# -- broker command and healthcheck -------------------------------------------------------------------
def broker_healthcheck(broker: InitRun) -> list[str]:
    test = resolved_service("broker")["healthcheck"]["test"]
    assert test[0] == "CMD"
    argv = [to_local(argument, broker.mounts) for argument in test[1:]]
    argv[argv.index("8883")] = str(broker.tls_port)
    return argv


def test_broker_runs_on_the_rendered_config_and_its_healthcheck_passes(running_broker):
    needs("mosquitto_sub")
    completed = subprocess.run(broker_healthcheck(running_broker), capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip(), "no $SYS/broker/version received"


def test_broker_healthcheck_fails_without_the_broker(initialised):
    needs("mosquitto_sub")
    argv = broker_healthcheck(initialised)  # nothing listens on its port
    assert subprocess.run(argv, capture_output=True, timeout=RUN_TIMEOUT_S, check=False).returncode != 0


# -- the Python services' healthcheck script ---------------------------------------------------------
@pytest.fixture(scope="module")
def healthcheck():
    specification = importlib.util.spec_from_file_location("deploy_healthcheck", DEPLOY_SCRIPTS / "healthcheck.py")
    module = importlib.util.module_from_spec(specification)
    specification.loader.exec_module(module)
    return module


def run_healthcheck(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEPLOY_SCRIPTS / "healthcheck.py"), *arguments],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


def test_connected_check_sees_an_established_connection(healthcheck):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)), server.accept()[0]:
            assert run_healthcheck("connected", str(port)).returncode == 0
        assert healthcheck.check_connected(free_port())[0] is False
    assert run_healthcheck("connected", str(free_port())).returncode == 1


def test_connected_check_reads_proc_net_tcp_lines(healthcheck):
    table = [
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
        "   0: 0100007F:D431 0100007F:22B3 01 00000000:00000000 00:00000000 00000000 10001 0 1",  # → 8883, ESTABLISHED
        "   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 10001 0 2",  # listening on 8080
        "   2: 0100007F:D432 0100007F:24E6 06 00000000:00000000 00:00000000 00000000 10001 0 3",  # → 9446, TIME_WAIT
    ]
    assert healthcheck.established_remote_ports(table) == {8883}


class HealthHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the name http.server dispatches to
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *arguments) -> None:
        pass  # keep test output clean


@pytest.fixture
def web_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HealthHandler)  # listening once constructed
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_check_follows_the_status_code(web_server):
    assert run_healthcheck("http", f"{web_server}/healthz").returncode == 0
    assert run_healthcheck("http", f"{web_server}/down").returncode == 1
    assert run_healthcheck("http", f"http://127.0.0.1:{free_port()}/healthz").returncode == 1
    assert run_healthcheck("bogus").returncode == 2


def test_progress_check_reads_the_edge_watchdogs_report(healthcheck, tmp_path):
    report = tmp_path / "health.json"
    assert run_healthcheck("progress", str(report)).returncode == 1  # no report: not started, or gone
    report.write_text(json.dumps({"healthy": True, "reason": "processing frames", "checked_at": time.time()}))
    assert run_healthcheck("progress", str(report)).returncode == 0
    report.write_text(json.dumps({"healthy": False, "reason": "no frame processed for 31 s", "checked_at": time.time()}))
    failed = run_healthcheck("progress", str(report))
    assert failed.returncode == 1 and "no frame processed" in failed.stdout
    report.write_text(json.dumps({"healthy": True, "reason": "processing frames", "checked_at": time.time() - 600}))
    assert healthcheck.check_progress(report)[0] is False  # a stale report: the agent stopped writing
