"""Log lines for bad input that cannot flood the log, however much bad input arrives.

A device sending the same bad message a thousand times a second must not
write a thousand lines (or tracebacks) a second. So:

* each *kind* of event (a reason with its details cut off) is logged in full
  the first time in an interval, then only counted; when the interval is over,
  one summary line says how many more there were and shows the latest;
* an unexpected exception logs its traceback once per distinct cause (its type
  and the place it was raised), ever; later ones are counted like any event;
* at most ``max_kinds`` kinds are told apart per interval, the rest share one
  summary, so varied junk is bounded too.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import traceback
from dataclasses import dataclass

_DETAILS = re.compile(r"[:;'\"(\[].*", re.DOTALL)  # what follows is the message's own detail, often its hostile content
_DIGITS = re.compile(r"\d+")
_KIND_CHARS = 60
_OTHER = "(other reasons)"
_MAX_CAUSES = 1000


def kind_of(reason: str) -> str:
    """The reason without its particulars: ``frame too large: 5000000 bytes`` -> ``frame too large``."""
    general = _DIGITS.sub("#", _DETAILS.sub("", reason)).strip()
    return general[:_KIND_CHARS] or reason[:_KIND_CHARS]


def cause_of(error: BaseException) -> str:
    """``TypeName at file.py:123 in function``: where the exception was raised."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return type(error).__name__
    last = frames[-1]
    return f"{type(error).__name__} at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"


@dataclass
class _Tally:
    suppressed: int = 0
    latest: str = ""


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 60.0, max_kinds: int = 50) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.max_kinds = max_kinds
        self._lock = threading.Lock()  # the ingest's planning and writer threads both log here
        self._started = time.monotonic()
        self._tallies: dict[str, _Tally] = {}
        self._causes: set[str] = set()

    def warning(self, reason: str, line: str) -> None:
        """Log ``line`` unless this reason's kind was logged already in this interval; then count it."""
        with self._lock:
            self._flush_if_due()
            kind = self._kind(reason)
            tally = self._tallies.get(kind)
            if tally is None:
                self._tallies[kind] = _Tally()
                self.logger.warning("%s", line)
            else:
                tally.suppressed += 1
                tally.latest = line

    def error(self, error: BaseException, what: str) -> str:
        """An unexpected exception: its traceback the first time its cause is seen, else a counted line.

        Returns the cause, for the quarantine reason."""
        cause = cause_of(error)
        line = f"{what}: {cause}: {error}"
        with self._lock:
            first = cause not in self._causes and len(self._causes) < _MAX_CAUSES
            if first:
                self._causes.add(cause)
                self._flush_if_due()
                self._tallies.setdefault(self._kind(f"internal error {cause}"), _Tally())  # later ones: counted
                self.logger.error("%s (traceback shown once for this cause)", line, exc_info=error)
        if not first:
            self.warning(f"internal error {cause}", line)
        return cause

    def _kind(self, reason: str) -> str:
        kind = kind_of(reason)
        return kind if kind in self._tallies or len(self._tallies) < self.max_kinds else _OTHER

    def flush(self) -> None:
        """Write the summaries of a finished interval (call now and then, and on stop)."""
        with self._lock:
            self._flush_if_due()

    def close(self) -> None:
        """Write the summaries of what is still only counted (on stop)."""
        with self._lock:
            self._summarise()

    def _flush_if_due(self) -> None:
        if time.monotonic() - self._started >= self.interval_s:
            self._summarise()

    def _summarise(self) -> None:
        elapsed = time.monotonic() - self._started
        for kind, tally in self._tallies.items():
            if tally.suppressed:
                self.logger.warning("%d more like %r in the last %.0f s; latest: %s", tally.suppressed, kind, elapsed, tally.latest)
        self._tallies.clear()
        self._started = time.monotonic()
