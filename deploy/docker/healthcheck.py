"""Container healthchecks for docker-compose.yml, standard library only (slim images have no curl).

    python /opt/emq/deploy/healthcheck.py connected 8883   a TCP connection to remote port 8883 is ESTABLISHED
    python /opt/emq/deploy/healthcheck.py http URL          URL answers 2xx within the timeout

Exit 0 healthy, 1 unhealthy (Docker's convention), with one line saying why.

``connected`` suits the MQTT clients (ingest, edge): the process is alive *and*
holds its broker connection. It reads /proc/net/tcp{,6}, which lists the
sockets of the container's network namespace, so it needs no privileges.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TCP_ESTABLISHED = "01"
HTTP_TIMEOUT_S = 5.0
USAGE = "usage: healthcheck.py connected PORT | healthcheck.py http URL"


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


def main(arguments: list[str]) -> int:
    if len(arguments) != 2 or arguments[0] not in ("connected", "http"):
        print(USAGE, file=sys.stderr)
        return 2
    check, target = arguments
    healthy, reason = check_connected(int(target)) if check == "connected" else check_http(target)
    print(reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
