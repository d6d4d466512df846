"""The progress watchdog: healthy means frames are being processed, not merely that a connection is open.

A frame loop stuck in a source read or a LiteRT call, with paho's network
thread alive, used to look healthy. Now the agent is unhealthy when no frame
has been processed for ``stall_s`` while the source should be delivering (not
paused; a live source being reopened counts as "should be delivering", so a
camera that stays away is reported). A thread of its own judges this every
``interval_s`` (the frame loop may be the thing that is stuck) and tells:

* systemd, through ``sd_notify`` (``READY=1`` at start, ``WATCHDOG=1`` only while
  healthy, ``STOPPING=1``): with ``WatchdogSec=`` in the unit, a stuck agent is
  restarted;
* the container healthcheck, through a small JSON file (``health_file``) that
  ``deploy/docker/healthcheck.py progress FILE`` reads;
* the stats message (``healthy``, ``last_frame_age_s``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.loop import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Health:
    healthy: bool
    reason: str
    last_frame_age_s: float | None  # None before the first frame
    checked_at: float  # wall clock, for the health file's reader


def judge(progress: Progress, stall_s: float, now: float | None = None) -> Health:
    """Healthy unless a frame is due and none was processed for ``stall_s`` (start-up counts from the start)."""
    now = time.monotonic() if now is None else now
    age = None if progress.last_frame_at is None else now - progress.last_frame_at
    if progress.waiting_for_source:
        return Health(True, "paused", age, time.time())
    since = now - (progress.last_frame_at if progress.last_frame_at is not None else progress.started_at)
    if since > stall_s:
        what = "no frame processed" if progress.last_frame_at is None else "no frame processed for"
        return Health(False, f"{what} in {since:.0f} s (limit {stall_s:.0f} s)", age, time.time())
    return Health(True, "processing frames", age, time.time())


def sd_notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` to systemd's notification socket ($NOTIFY_SOCKET); False when not run by systemd."""
    address = (environ or os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notifier:
            notifier.sendto(state.encode(), address)
        return True
    except OSError as error:
        log.debug("sd_notify(%s) failed: %s", state, error)
        return False


def write_health_file(path: Path, health: Health) -> None:
    """Atomically replace the health file (a reader never sees half of it)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(asdict(health)))
    temporary.replace(path)


class ProgressWatchdog:
    """Judges ``progress`` every ``interval_s`` on its own thread and reports the verdict."""

    def __init__(self, progress: Progress, stall_s: float, interval_s: float, health_file: Path | None) -> None:
        self.progress, self.stall_s, self.interval_s, self.health_file = progress, stall_s, interval_s, health_file
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_healthy = True

    def check(self) -> Health:
        return judge(self.progress, self.stall_s)

    def start(self) -> None:
        if self.health_file is not None:
            self.health_file.parent.mkdir(parents=True, exist_ok=True)
        self._report(self.check())
        sd_notify("READY=1")
        self._thread = threading.Thread(target=self._run, name="progress-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        sd_notify("STOPPING=1")
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval_s + 1)
        if self.health_file is not None:
            self.health_file.unlink(missing_ok=True)  # a stopped agent is not "healthy"

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._report(self.check())

    def _report(self, health: Health) -> None:
        if health.healthy:
            sd_notify("WATCHDOG=1")
        if health.healthy != self._was_healthy:
            (log.info if health.healthy else log.error)("progress watchdog: %s", health.reason)
            sd_notify(f"STATUS={health.reason}")
            self._was_healthy = health.healthy
        if self.health_file is not None:
            try:
                write_health_file(self.health_file, health)
            except OSError as error:
                log.warning("cannot write the health file %s: %s", self.health_file, error)
