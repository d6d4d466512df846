"""The cloud side across machines, as docs/deploy.md's scaling guide sets it up.

Two ingest workers with their own identities share the stream through a shared
subscription and store into one PostgreSQL database with the database frame
backend; one worker and the dashboard run in a second network namespace (their
own "machine": they reach the broker and PostgreSQL only over a veth link). The
dashboard there serves a frame that the worker here stored: no disk is shared.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broker.config import BrokerSettings
from broker.pki import PkiPaths, ensure_server_cert
from broker.runner import MosquittoProcess
from cloud.store import DashboardStore
from comms.mqtt import MqttClient
from comms.settings import pki_mqtt_settings
from contract.messages import FRAME_CONTENT_TYPE
from contract.topics import Topics
from tests import factories
from tests.cloud_helpers import create_postgres_database, drop_postgres_database, frame_properties, ingest_env, jpeg_b64, postgres_reachable
from tests.conftest import REPO_ROOT, WAIT_S, console_script, free_port, wait_until
from tests.netns_helpers import Namespace, TcpForwarder, netns_unavailable
from tests.webui_helpers import PASSWORDS, HttpSession

RESULTS = 120
STREAM_WAIT_S = 60.0
pytestmark = pytest.mark.slow


@pytest.fixture
def other_host():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with Namespace() as namespace:
        yield namespace


@pytest.fixture
def postgres(other_host):
    """One database, offered to the other namespace on the veth address as a LAN server would be."""
    reason = postgres_reachable()
    if reason:
        pytest.skip(reason)
    url, name = create_postgres_database()
    forwarder = TcpForwarder((other_host.host_ip, 0), ("127.0.0.1", 5432))
    remote_url = url.replace("127.0.0.1:5432", f"{other_host.host_ip}:{forwarder.address[1]}")
    yield url, remote_url
    forwarder.stop()
    drop_postgres_database(name)


@pytest.fixture
def lan_broker(pki_dir, tmp_path, other_host):
    """The repo's broker on every interface, its certificate also naming the veth address."""
    pki = tmp_path / "pki"
    shutil.copytree(pki_dir, pki)
    ensure_server_cert(PkiPaths(pki), [other_host.host_ip])
    settings = BrokerSettings(pki_dir=pki, state_dir=tmp_path / "broker", bind_address="0.0.0.0", tls_port=free_port(), password_port=None)
    with MosquittoProcess(settings) as broker:
        yield broker, pki


def start_logged(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)


def totals_of(log_text: str) -> dict:
    line = [line for line in log_text.splitlines() if "ingest totals:" in line][-1]
    return json.loads(line.split("ingest totals: ", 1)[1])


def dashboard_env(pki: Path, tmp_path: Path, broker_host: str, broker_port: int, store_url: str, listen: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "EMQ_WEBUI__PKI_DIR": str(pki), "EMQ_WEBUI__MQTT__HOST": broker_host, "EMQ_WEBUI__MQTT__PORT": str(broker_port),
        "EMQ_WEBUI__SERVER__HOST": listen, "EMQ_WEBUI__SERVER__PORT": str(free_port()), "EMQ_WEBUI__SERVER__METRICS_PORT": "0",
        "EMQ_WEBUI__STORE__URL": store_url, "EMQ_WEBUI__STORE__DATA_DIR": str(tmp_path / "dashboard-has-no-data"),
        "EMQ_WEBUI__AUTH__USERS_FILE": str(tmp_path / "users.json"), "EMQ_WEBUI__AUTH__SECRET_KEY_FILE": str(tmp_path / "secret_key"),
    })
    return env


def test_workers_and_a_dashboard_on_other_hosts_share_one_postgresql_store(other_host, postgres, lan_broker, tmp_path, spawned):
    local_url, remote_url = postgres
    broker, pki = lan_broker
    port = broker.settings.tls_port
    shared = {"SHARED_GROUP": "ingest", "FRAMES__BACKEND": "database"}
    # Worker 1 here; worker 2 on the other host, reaching the broker and the database over the link.
    here = ingest_env(pki, port, tmp_path / "data-1", local_url, WORKER_NAME="1", **shared)
    there = ingest_env(pki, port, tmp_path / "data-2", remote_url, WORKER_NAME="2", **shared, MQTT__HOST=other_host.host_ip)
    logs = {name: tmp_path / f"ingest-{name}.log" for name in ("1", "2")}
    spawned.append(start_logged([console_script("emq-ingest")], here, logs["1"]))
    spawned.append(start_logged(other_host.command(console_script("emq-ingest")), there, logs["2"]))
    for log in logs.values():
        assert wait_until(lambda: log.exists() and "subscriptions active" in log.read_text(), WAIT_S * 3), log.read_text()

    device = MqttClient(pki_mqtt_settings(pki, "cam-a", port=port)).start()
    assert device.wait_connected(WAIT_S)
    topics, epoch = Topics(), "feedfacecafebeef"
    results = [factories.result(seq=seq, epoch=epoch) for seq in range(RESULTS)]
    frames = {result.msg_id: jpeg_b64(seed=index) for index, result in enumerate(results[:20])}
    for index, result in enumerate(results):
        assert device.publish(topics.result("cam-a"), result.to_json(), qos=1).wait(WAIT_S)
        if result.msg_id in frames:
            device.publish(topics.frame("cam-a"), frames[result.msg_id], qos=1, user_properties=frame_properties(index, result),
                           content_type=FRAME_CONTENT_TYPE)
    store = DashboardStore(local_url)
    assert wait_until(lambda: store.counts()["results"] == RESULTS and store.counts()["frames"] == len(frames), STREAM_WAIT_S), (
        store.counts(), logs["1"].read_text()[-3000:], logs["2"].read_text()[-3000:])
    assert not list(tmp_path.glob("data-*/**/*.jpg")), "frames are in the database, not on either worker's disk"

    # The dashboard on the other host: no data folder, only the database and the broker over the link.
    env = dashboard_env(pki, tmp_path, other_host.host_ip, port, remote_url, listen=other_host.ip)
    created = subprocess.run([sys.executable, "-m", "webui", "create-user", "viewer", "--role", "viewer", "--password-stdin"],
                             input=PASSWORDS["viewer"] + "\n", env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert created.returncode == 0, created.stderr
    spawned.append(start_logged(other_host.command(sys.executable, "-m", "webui", "serve"), env, tmp_path / "webui.log"))
    client = HttpSession(f"http://{other_host.ip}:{env['EMQ_WEBUI__SERVER__PORT']}")
    assert wait_until(lambda: healthy(client), WAIT_S * 3), (tmp_path / "webui.log").read_text()[-3000:]
    assert client.log_in("viewer").status == 302
    served = 0
    for result_row in store.results(limit=RESULTS):
        if result_row.msg_id in frames:
            response = client.get(f"/media/results/{result_row.id}/frame")
            assert response.status == 200 and response.body == base64.b64decode(frames[result_row.msg_id])
            served += 1
    assert served == len(frames)
    store.close()
    device.stop(announce_stopped=False)

    for process in spawned[:2]:
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 0
    per_worker = [totals_of(log.read_text()) for log in logs.values()]
    assert sum(totals["results"] for totals in per_worker) == RESULTS
    assert all(totals["results"] > 0 for totals in per_worker), per_worker  # both machines took part
    assert all(totals["duplicates"] == 0 for totals in per_worker)


def healthy(client: HttpSession) -> bool:
    try:
        return client.get("/healthz").status == 200
    except OSError:
        return False
