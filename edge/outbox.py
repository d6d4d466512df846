"""On-disk store-and-forward queue for results (SQLite in WAL mode).

Every start of the agent opens a new *epoch* (a random id); its results are
numbered 0, 1, 2, ... within it, so ``(device_id, epoch, seq)`` identifies a
result even when a power cut rolls this file back (the next start is a new
epoch, never a reused number).

A result stays in the outbox until the cloud says it has *stored* it (the
ingest's retained stored mark, :meth:`Outbox.confirm`), not merely until the
broker acknowledged it: Mosquitto keeps acknowledged messages in memory until
its next autosave, so a broker crash would otherwise lose them. With
``keep_until = "acknowledged"`` (no ingest of ours behind the broker) a row
leaves on the broker's acknowledgement instead. So a broker crash, a lost
network or a killed agent loses nothing: the rows go out again, in order.

The outbox is bounded (rows, bytes, age). When a bound is hit the oldest
rows are dropped, counted and logged: a full disk must not stop a device
that runs for months. A message the broker *rejects* (e.g. not authorised)
moves to ``dead_letter`` with the reason instead of blocking the queue.
"""

from __future__ import annotations

import logging
import secrets
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
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (epoch, seq)
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
-- One row per agent start: how many results it numbered (for diagnostics and tests).
CREATE TABLE IF NOT EXISTS epochs (
    epoch TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    next_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

DROPPED = "dropped"
# Rows from an outbox written before epochs existed: confirmed by the broker's PUBACK, as then.
LEGACY_EPOCH = ""


def new_epoch() -> str:
    """A fresh epoch id: 64 random bits, so two runs never share one."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    epoch: str
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
        self._upgrade_legacy_table()
        self._db.executescript(SCHEMA)
        self._count, self._bytes = self._measure()
        self.epoch = new_epoch()
        self._next_seq = 0

    def _upgrade_legacy_table(self) -> None:
        """An outbox from before epochs (seq unique on its own) keeps its rows, as epoch ''."""
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(outbox)")]
        if not columns or "epoch" in columns:
            return
        self._db.executescript(
            "BEGIN IMMEDIATE; ALTER TABLE outbox RENAME TO outbox_legacy;" + SCHEMA +
            "INSERT INTO outbox(id, epoch, seq, topic, payload, created_at) "
            "SELECT id, '', seq, topic, payload, created_at FROM outbox_legacy; DROP TABLE outbox_legacy; COMMIT;"
        )
        log.info("outbox %s upgraded: its rows are sent as before and confirmed by the broker", self.path)

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
        """The sequence number the next :meth:`append` will use in this epoch."""
        with self._lock:
            return self._next_seq

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._counter(DROPPED)

    # -- producer --------------------------------------------------------------
    def append(self, seq: int, topic: str, payload: bytes) -> None:
        """Store one message of this epoch; ``seq`` must be :meth:`next_seq` (checked: no gaps, no reuse)."""
        with self._lock:
            if seq != self._next_seq:
                raise ValueError(f"outbox expected seq {self._next_seq}, got {seq}")
            now = time.time()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO outbox(epoch, seq, topic, payload, created_at) VALUES(?, ?, ?, ?, ?)",
                    (self.epoch, seq, topic, payload, now),
                )
                self._db.execute(
                    "INSERT INTO epochs(epoch, started_at, next_seq) VALUES(?, ?, ?)"
                    " ON CONFLICT(epoch) DO UPDATE SET next_seq = excluded.next_seq",
                    (self.epoch, now, seq + 1),
                )
                self._next_seq = seq + 1
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
                "SELECT id, epoch, seq, topic, payload, created_at FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (last_id, limit),
            ).fetchall()
        return [OutboxRow(*row) for row in rows]

    def wait_for_rows_after(self, last_id: int, timeout: float) -> bool:
        """Block until a row newer than ``last_id`` exists, or ``timeout``."""
        with self._added:
            return self._added.wait_for(
                lambda: self._db.execute("SELECT 1 FROM outbox WHERE id > ? LIMIT 1", (last_id,)).fetchone() is not None,
                timeout,
            )

    def confirm(self, epoch: str, seq: int) -> int:
        """The cloud stored every result 0..``seq`` of ``epoch``: forget them. Returns how many rows went."""
        with self._lock:
            removed, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE epoch = ? AND seq <= ?", (epoch, seq)
            ).fetchone()
            if removed:
                self._db.execute("DELETE FROM outbox WHERE epoch = ? AND seq <= ?", (epoch, seq))
                self._count -= removed
                self._bytes -= size
            return removed

    def first_id(self) -> int | None:
        """Id of the oldest row still waiting, or None when the outbox is empty."""
        with self._lock:
            return self._db.execute("SELECT MIN(id) FROM outbox").fetchone()[0]

    def remove(self, row_id: int) -> None:
        """The broker acknowledged this row and that is all we wait for (see ``keep_until``): forget it."""
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
