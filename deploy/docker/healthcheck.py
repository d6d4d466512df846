"""Container healthchecks for docker-compose.yml, standard library only (slim images have no curl).

    python /opt/emq/deploy/healthcheck.py connected 8883   a TCP connection to remote port 8883 is ESTABLISHED
    python /opt/emq/deploy/healthcheck.py http URL          URL answers 2xx within the timeout
    python /opt/emq/deploy/healthcheck.py progress FILE     the edge's progress watchdog says healthy, lately

Exit 0 healthy, 1 unhealthy (Docker's convention), with one line saying why.

``connected`` suits the MQTT clients (ingest, edge): the process is alive *and*
holds its broker connection. It reads /proc/net/tcp{,6}, which lists the
sockets of the container's network namespace, so it needs no privileges.

``progress`` suits the edge agent: an open connection says nothing about a frame
loop stuck in a camera read. The agent's watchdog thread rewrites FILE every few
seconds with its verdict (frames processed lately, or nothing due); the check
fails if the verdict is "unhealthy" or the file is stale (the agent is gone).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TCP_ESTABLISHED = "01"
HTTP_TIMEOUT_S = 5.0
PROGRESS_MAX_AGE_S = 60.0  # the watchdog writes every watchdog.interval_s (5 s by default)
USAGE = "usage: healthcheck.py connected PORT | healthcheck.py http URL | healthcheck.py progress FILE"


def established_remote_ports(table_lines: Iterable[str]) -> set[int]:
    """Remote ports of ESTABLISHED sockets in a /proc/net/tcp table (header line skipped)."""
    ports = set()
    for line in list(table_lines)[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != TCP_ESTABLISHED:
            continue
        _address, _, port_hex = fields[2].rpartition(":")
        ports.add(int(port_hex, 16))
    return ports


def check_connected(port: int, tables: Iterable[Path] = TCP_TABLES) -> tuple[bool, str]:
    for table in tables:
        if table.exists() and port in established_remote_ports(table.read_text().splitlines()):
            return True, f"connected to a peer on port {port}"
    return False, f"no established connection to port {port}"


def check_http(url: str, timeout: float = HTTP_TIMEOUT_S) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300, f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return False, f"{url}: HTTP {error.code}"
    except OSError as error:
        return False, f"{url}: {error}"


def check_progress(path: Path, max_age_s: float = PROGRESS_MAX_AGE_S, now: float | None = None) -> tuple[bool, str]:
    try:
        health = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return False, f"no health report in {path}: {error}"
    age = (time.time() if now is None else now) - float(health.get("checked_at", 0))
    if age > max_age_s:
        return False, f"health report {age:.0f} s old: the agent or its watchdog stopped"
    return bool(health.get("healthy")), str(health.get("reason", ""))


CHECKS = {"connected": lambda target: check_connected(int(target)), "http": check_http,
          "progress": lambda target: check_progress(Path(target))}


def main(arguments: list[str]) -> int:
    if len(arguments) != 2 or arguments[0] not in CHECKS:
        print(USAGE, file=sys.stderr)
        return 2
    check, target = arguments
    healthy, reason = CHECKS[check](target)
    print(reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
