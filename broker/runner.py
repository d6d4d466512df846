"""Run Mosquitto with a rendered config: used by `emq-broker run` and by the test fixtures."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from broker.config import BrokerSettings, render_all

READY_TIMEOUT_S = 10.0


class BrokerError(RuntimeError):
    pass


def mosquitto_binary() -> str:
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        raise BrokerError("mosquitto not found: install it (apt-get install mosquitto mosquitto-clients)")
    return binary


def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll until ``port`` accepts connections; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"mosquitto exited with code {process.returncode}")
        if port_accepts(host, port):
            return
        time.sleep(0.05)
    raise BrokerError(f"mosquitto did not listen on {host}:{port} within {timeout:.0f} s")


class MosquittoProcess:
    """A Mosquitto child process on the rendered config, restartable (same state folder)."""

    def __init__(self, settings: BrokerSettings, log_path: Path | None = None) -> None:
        self.settings = settings
        # Mosquitto's own log file when it has one (its start-up errors, on stderr, are appended to it too).
        self.log_path = log_path or settings.log_file or settings.state_dir / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1" if self.settings.bind_address in ("0.0.0.0", "::") else self.settings.bind_address

    def start(self) -> "MosquittoProcess":
        conf = render_all(self.settings)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_for_port(self.host, self.settings.tls_port, READY_TIMEOUT_S, self.process)
        except BrokerError as error:
            raise BrokerError(f"{error}; log:\n{self.read_log()[-2000:]}") from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Mosquitto saves its persistence file before exiting."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """Re-render the ACL and tell Mosquitto to re-read it (SIGHUP)."""
        render_all(self.settings)
        if self.process is not None:
            self.process.send_signal(1)

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "MosquittoProcess":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
