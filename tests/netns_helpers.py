"""Another machine, as far as the network goes: a Linux network namespace joined to this one by a veth pair.

A process started with :meth:`Namespace.command` has its own loopback and its
own interface; it reaches this host only at ``host_ip`` over the veth link, as a
dashboard or an ingest worker on a second machine would. Services that listen on
loopback here (PostgreSQL) are offered on ``host_ip`` through a :class:`TcpForwarder`,
which stands in for that server being reachable on the LAN.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import threading
from contextlib import suppress


def _ip(*arguments: str, namespace: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, "ip", *arguments], check=True, capture_output=True, text=True, timeout=10)


def netns_unavailable() -> str | None:
    """None if this machine can create network namespaces, else why not (the test is skipped with it)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    probe = f"emq-probe-{secrets.token_hex(3)}"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True, text=True, timeout=10)
    except (subprocess.CalledProcessError, OSError) as error:
        return f"cannot create a network namespace: {getattr(error, 'stderr', '') or error}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


class Namespace:
    """A network namespace with a veth link to this one: ``host_ip`` here, ``ip`` inside."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"emq-{tag}"
        self._host_link, self._inner_link = f"emqh{tag}", f"emqn{tag}"
        subnet = secrets.randbelow(250) + 1
        self.host_ip, self.ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"

    def __enter__(self) -> "Namespace":
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, timeout=10)
        try:
            _ip("link", "add", self._host_link, "type", "veth", "peer", "name", self._inner_link)
            _ip("link", "set", self._inner_link, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self._host_link)
            _ip("link", "set", self._host_link, "up")
            _ip("addr", "add", f"{self.ip}/30", "dev", self._inner_link, namespace=self.name)
            _ip("link", "set", self._inner_link, "up", namespace=self.name)
            _ip("link", "set", "lo", "up", namespace=self.name)
        except BaseException:
            self.close()
            raise
        return self

    def command(self, *arguments: str) -> list[str]:
        """``arguments`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *arguments]

    def close(self) -> None:
        # Anything still running inside would keep the namespace alive.
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=10).stdout.split()
        for pid in pids:
            with suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self._host_link], capture_output=True, timeout=10)  # gone with the namespace, normally

    def __exit__(self, *exc_info) -> None:
        self.close()


class TcpForwarder:
    """Accepts on ``listen`` and relays each connection to ``target``, both ways, until stopped."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(listen)
        self.address = self._server.getsockname()[:2]
        self._sockets: list[socket.socket] = []
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, name="forwarder", daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _address = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        self._stopped.set()
        self._server.close()
        for connection in self._sockets:
            with suppress(OSError):
                connection.close()
