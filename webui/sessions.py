"""Server-side login sessions: the cookie names a session, this table says whether it is still open.

Flask's own sessions are signed cookies: logging out only asks the browser to
forget its copy, and a copied cookie keeps working until it expires. Here the
signed cookie carries a random session id and the dashboard keeps the open
ones in a small SQLite file next to the users file, so logging out (deleting
the row) really ends the session, and sessions survive a restart. Only the
SHA-256 of each id is stored: the file alone lets nobody in.

Each row also keeps the fingerprint of the user's password hash at login
(:func:`webui.users.session_tag`): a changed password ends every session of
that user at its next request, wherever the cookie was copied to.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SESSION_ID_BYTES = 32
BUSY_TIMEOUT_S = 5.0  # the file may be busy for a moment while another thread writes

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id_hash    TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL,
    tag        TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
)
"""


@dataclass(frozen=True)
class OpenSession:
    user_name: str
    tag: str
    expires_at: float


def hash_session_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """The open sessions, in SQLite; thread-safe (waitress serves requests on many threads)."""

    def __init__(self, path: Path, lifetime_s: float, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # owner only, like the users file
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        self._db.execute(SCHEMA)

    def open(self, user_name: str, tag: str) -> str:
        """A new session for ``user_name``; returns the id to put in the cookie."""
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        now = self._clock()
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))  # keeps the table small
            self._db.execute(
                "INSERT INTO sessions (id_hash, user_name, tag, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (hash_session_id(session_id), user_name, tag, now, now + self.lifetime_s),
            )
        return session_id

    def get(self, session_id: str) -> OpenSession | None:
        """The session if it is open and not expired, else None."""
        with self._lock:
            row = self._db.execute(
                "SELECT user_name, tag, expires_at FROM sessions WHERE id_hash = ?", (hash_session_id(session_id),)
            ).fetchone()
        if row is None or row[2] <= self._clock():
            return None
        return OpenSession(*row)

    def end(self, session_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE id_hash = ?", (hash_session_id(session_id),))

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM sessions WHERE expires_at > ?", (self._clock(),)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
