"""On-disk store-and-forward queue for results (SQLite in WAL mode).

A result enters the outbox in the same transaction that advances the
device's sequence number, and leaves it only when the broker has
acknowledged it. So a broker outage, a lost network or a killed agent
loses nothing: after reconnecting, or after a restart, the rows go out
again in their original order.

The outbox is bounded (rows, bytes, age). When a bound is hit the oldest
rows are dropped, counted and logged: a full disk must not stop a device
that runs for months. A message the broker *rejects* (e.g. not authorised)
moves to ``dead_letter`` with the reason instead of blocking the queue.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

NEXT_SEQ = "next_seq"
DROPPED = "dropped"


@dataclass(frozen=True)
class OutboxRow:
    id: int
    seq: int
    topic: str
    payload: bytes
    created_at: float


@dataclass(frozen=True)
class OutboxLimits:
    max_messages: int = 100_000
    max_bytes: int = 512 * 1024 * 1024
    max_age_s: float = 7 * 24 * 3600


class Outbox:
    """Thread-safe: the agent thread appends, the forwarder thread reads and deletes."""

    def __init__(
        self,
        path: Path,
        limits: OutboxLimits = OutboxLimits(),
        durability: Literal["normal", "full"] = "normal",
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.limits = limits
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL survives a killed process (what the tests and most failures are);
        # FULL also survives power loss, at one fsync per result.
        self._db.execute(f"PRAGMA synchronous={durability.upper()}")
        self._db.executescript(SCHEMA)
        self._count, self._bytes = self._measure()

    def _measure(self) -> tuple[int, int]:
        # Cached so that the per-result limit check does not scan the table.
        return self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- counters ------------------------------------------------------------
    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def next_seq(self) -> int:
        """The sequence number the next :meth:`append` will use (persisted across restarts)."""
        with self._lock:
            return self._counter(NEXT_SEQ)

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._counter(DROPPED)

    # -- producer --------------------------------------------------------------
    def append(self, seq: int, topic: str, payload: bytes) -> None:
        """Store one message; ``seq`` must be :meth:`next_seq` (checked, so no seq is ever reused)."""
        with self._lock:
            expected = self._counter(NEXT_SEQ)
            if seq != expected:
                raise ValueError(f"outbox expected seq {expected}, got {seq}")
            now = time.time()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO outbox(seq, topic, payload, created_at) VALUES(?, ?, ?, ?)", (seq, topic, payload, now)
                )
                self._set_counter(NEXT_SEQ, seq + 1)
                self._count += 1
                self._bytes += len(payload)
                self._enforce_limits(now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._count, self._bytes = self._measure()
                raise
            self._added.notify_all()

    def _enforce_limits(self, now: float) -> None:
        """Drop-oldest policy, inside the caller's transaction."""
        oldest_allowed = now - self.limits.max_age_s
        victims = []
        for row_id, created_at, size in self._db.execute("SELECT id, created_at, LENGTH(payload) FROM outbox ORDER BY id"):
            over = self._count > self.limits.max_messages or self._bytes > self.limits.max_bytes or created_at < oldest_allowed
            if not over:
                break
            victims.append(row_id)
            self._count -= 1
            self._bytes -= size
        if victims:
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(row_id,) for row_id in victims])
            self._set_counter(DROPPED, self._counter(DROPPED) + len(victims))
            log.warning(
                "outbox full (limits: %d messages, %d bytes, %.0f s): dropped the %d oldest result(s)",
                self.limits.max_messages, self.limits.max_bytes, self.limits.max_age_s, len(victims),
            )

    # -- consumer --------------------------------------------------------------
    def after(self, last_id: int, limit: int) -> list[OutboxRow]:
        """Up to ``limit`` rows with id > ``last_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, seq, topic, payload, created_at FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)
            ).fetchall()
        return [OutboxRow(*row) for row in rows]

    def wait_for_rows_after(self, last_id: int, timeout: float) -> bool:
        """Block until a row newer than ``last_id`` exists, or ``timeout``."""
        with self._added:
            return self._added.wait_for(
                lambda: self._db.execute("SELECT 1 FROM outbox WHERE id > ? LIMIT 1", (last_id,)).fetchone() is not None,
                timeout,
            )

    def remove(self, row_id: int) -> None:
        """The broker acknowledged this row: forget it."""
        with self._lock:
            row = self._db.execute("SELECT LENGTH(payload) FROM outbox WHERE id = ?", (row_id,)).fetchone()
            if row is None:
                return  # already dropped by the size/age policy
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            self._count -= 1
            self._bytes -= row[0]

    def move_to_dead_letter(self, row: OutboxRow, reason: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO dead_letter(id, seq, topic, payload, created_at, reason, failed_at) VALUES(?, ?, ?, ?, ?, ?, ?)",
                (row.id, row.seq, row.topic, row.payload, row.created_at, reason[:500], time.time()),
            )
            deleted = self._db.execute("DELETE FROM outbox WHERE id = ?", (row.id,)).rowcount
            self._db.execute("COMMIT")
            if deleted:
                self._count -= 1
                self._bytes -= len(row.payload)
        log.error("broker rejected result seq %d (%s); kept in the dead-letter table of %s", row.seq, reason, self.path)

    def depth(self) -> int:
        with self._lock:
            return self._count

    def dead_letters(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
