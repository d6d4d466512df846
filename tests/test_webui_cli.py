"""``emq-webui`` as users run it (``python -m webui``, the console script's target): users, config errors, serving."""

from __future__ import annotations

import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from werkzeug.security import check_password_hash

from tests.conftest import REPO_ROOT, free_port, wait_until
from tests.webui_helpers import DeviceClient, HttpSession, create_schema, device_availability, synthetic_jpeg

START_TIMEOUT_S = 20


def webui(*arguments: str, env: dict | None = None, stdin: str | None = None, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "webui", *arguments], input=stdin, capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
    )


def env_for(tmp_path: Path, pki_dir: Path, broker_port: int, **extra: str) -> dict[str, str]:
    """Configure the dashboard through EMQ_WEBUI__* variables only (the container way)."""
    env = dict(os.environ)
    env.update({
        "EMQ_WEBUI__PKI_DIR": str(pki_dir),
        "EMQ_WEBUI__MQTT__PORT": str(broker_port),
        "EMQ_WEBUI__MQTT__RECONNECT_MIN_DELAY_S": "0.1",
        "EMQ_WEBUI__SERVER__PORT": "0",
        "EMQ_WEBUI__STORE__URL": f"sqlite:///{tmp_path / 'emotion.db'}",
        "EMQ_WEBUI__STORE__DATA_DIR": str(tmp_path / "data"),
        "EMQ_WEBUI__AUTH__USERS_FILE": str(tmp_path / "users.json"),
        "EMQ_WEBUI__AUTH__SECRET_KEY_FILE": str(tmp_path / "secret_key"),
        "EMQ_WEBUI__SERVER__METRICS_PORT": str(free_port()),
    })
    env.update(extra)
    create_schema(env["EMQ_WEBUI__STORE__URL"])
    return env


def test_create_user_prints_a_generated_password_once_and_manages_the_file(tmp_path):
    users_file = tmp_path / "users.json"
    created = webui("create-user", "admin", "--role", "admin", "--users-file", str(users_file))
    assert created.returncode == 0, created.stderr
    password = re.search(r"password \(shown once, store it now\): (\S+)", created.stdout).group(1)
    assert len(password) >= 20 and password not in users_file.read_text()
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    assert check_password_hash(__import__("json").loads(users_file.read_text())["users"]["admin"]["password_hash"], password)

    again = webui("create-user", "admin", "--role", "admin", "--if-missing", "--users-file", str(users_file))
    assert again.returncode == 0 and "unchanged" in again.stdout and "password" not in again.stdout.split("unchanged")[1]
    duplicate = webui("create-user", "admin", "--users-file", str(users_file))
    assert duplicate.returncode == 1 and "exists" in duplicate.stderr
    weak = webui("create-user", "bob", "--password-stdin", "--users-file", str(users_file), stdin="short\n")
    assert weak.returncode == 1 and "too short" in weak.stderr
    chosen = webui("create-user", "bob", "--role", "labeller", "--password-stdin", "--users-file", str(users_file), stdin="bob-password-123\n")
    assert chosen.returncode == 0 and "shown once" not in chosen.stdout
    listing = webui("list-users", "--users-file", str(users_file))
    assert [line.split("\t")[:2] for line in listing.stdout.splitlines()] == [["admin", "admin"], ["bob", "labeller"]]
    assert webui("delete-user", "bob", "--users-file", str(users_file)).returncode == 0
    assert webui("delete-user", "bob", "--users-file", str(users_file)).returncode == 1


def test_hash_password_prints_a_werkzeug_hash():
    hashed = webui("hash-password", "--password-stdin", stdin="a-long-password\n")
    assert hashed.returncode == 0
    assert check_password_hash(hashed.stdout.strip(), "a-long-password")


def test_bad_configs_are_refused_at_start_with_exit_code_2_and_the_reason(tmp_path, pki_dir):
    config = tmp_path / "webui.toml"
    config.write_text('[server]\nprot = 8080\n[live]\nmax_devices = 0\n')
    result = webui("serve", "--config", str(config), env=env_for(tmp_path, pki_dir, 1))
    assert result.returncode == 2
    assert "server.prot: Extra inputs are not permitted" in result.stderr
    assert "live.max_devices" in result.stderr, "every problem is reported at once"

    no_pki = webui("serve", env=env_for(tmp_path, tmp_path / "missing-pki", 1))
    assert no_pki.returncode == 2 and "emq-pki init" in no_pki.stderr

    env = env_for(tmp_path, pki_dir, 1, EMQ_WEBUI__SERVER__PORT="not-a-port")
    assert webui("serve", env=env).returncode == 2
    printed = webui("--print-config", env=env_for(tmp_path, pki_dir, 1, EMQ_WEBUI__AUTH__SECRET_KEY="s3cret-value"))
    assert printed.returncode == 0 and "s3cret-value" not in printed.stdout and '"max_streams": 32' in printed.stdout


class ServerProcess:
    """``python -m webui serve`` with its stdout read on a thread (to learn the URL it printed)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "webui", "serve"], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def url(self) -> str:
        try:
            line = self.lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError("the server printed nothing") from None
        match = re.search(r"serving on (http://\S+)", line)
        assert match, line
        return match.group(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


def test_the_cli_serves_the_dashboard_and_stops_cleanly_on_sigterm(tmp_path, pki_dir, broker, mqtt_client):
    hashed = webui("hash-password", "--password-stdin", stdin="zed-password-123\n").stdout.strip()
    env = env_for(tmp_path, pki_dir, broker.settings.tls_port, EMQ_WEBUI__AUTH__USERS__ZED__ROLE="admin", EMQ_WEBUI__AUTH__USERS__ZED__PASSWORD_HASH=hashed)
    server = ServerProcess(env, tmp_path / "webui.log")
    try:
        url = server.url()
        client = HttpSession(url)
        assert client.get("/").status == 302
        assert client.log_in("zed", "zed-password-123").status == 302
        assert wait_until(lambda: client.get("/healthz").status == 200), "the CLI's server connected to the broker"
        device = DeviceClient(mqtt_client("cam-a", availability=device_availability("cam-a")), "cam-a")
        assert wait_until(lambda: [d["status"] for d in client.get("/api/devices").json()["devices"]] == ["online"])
        device.publish_frame(synthetic_jpeg("cli"))
        assert wait_until(lambda: client.get("/api/devices").json()["devices"][0]["last_frame_at"] is not None)
        assert client.get("/api/me").json() == {"user": "zed", "role": "admin"}
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{env['EMQ_WEBUI__SERVER__METRICS_PORT']}/metrics", timeout=5).read().decode()
        assert 'emq_webui_request_seconds_count{endpoint="api.me",method="GET"} 1.0' in metrics
        assert "emq_webui_live_devices 1.0" in metrics and 'emq_webui_responses_total{endpoint="api.devices",status="200"}' in metrics

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) == 0
    finally:
        server.stop()
    assert "Traceback" not in (tmp_path / "webui.log").read_text()


def test_a_busy_port_is_a_clear_error(tmp_path, pki_dir, broker):
    import socket

    with socket.socket() as taken:
        port = free_port()
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = webui("serve", "--port", str(port), env=env_for(tmp_path, pki_dir, broker.settings.tls_port))
    assert result.returncode == 4
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("missing", ["plotly"])
def test_a_missing_chart_library_is_a_clear_error(tmp_path, pki_dir, missing):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import importlib.util\n"
        "real = importlib.util.find_spec\n"
        f"importlib.util.find_spec = lambda name, *a, **k: None if name == {missing!r} else real(name, *a, **k)\n"
    )
    env = env_for(tmp_path, pki_dir, 1, PYTHONPATH=str(blocker))
    result = webui("serve", env=env)
    assert result.returncode == 3
    assert "plotly" in result.stderr and "pip install" in result.stderr
