"""Dashboard users: a JSON users file managed by ``emq-webui create-user``, plus users from the config.

Only werkzeug password hashes are stored (scrypt by default). The file is
written atomically with mode 0600 and re-read when it changes, so a user
added or removed on the command line takes effect without a restart; a
removed user or a changed password also ends that user's open sessions
(see :func:`session_tag`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.security import check_password_hash, generate_password_hash

from webui.config import ROLES, USER_NAME_PATTERN, Role, UserEntry

MIN_PASSWORD_LENGTH = 10
GENERATED_PASSWORD_BYTES = 15  # 20 URL-safe characters
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}


class UserError(ValueError):
    """A users-file problem or a refused change (bad name, weak password, duplicate)."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password_hash: str

    def can(self, role: Role) -> bool:
        """Roles are ordered: admin can do what a labeller can, who can do what a viewer can."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


class StoredUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    password_hash: str = Field(min_length=20)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


class UsersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: dict[str, StoredUser] = Field(default_factory=dict)


def hash_password(password: str) -> str:
    return generate_password_hash(password)


def generate_password() -> str:
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


def check_user_name(name: str) -> str:
    if not re.fullmatch(USER_NAME_PATTERN, name or ""):
        raise UserError(f"invalid user name {name!r}: 1-64 of A-Z a-z 0-9 _ . @ -, starting with a letter or digit")
    return name


def check_password_strength(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    return password


def session_tag(user: User) -> str:
    """A short fingerprint of the password hash kept in the session: a new password invalidates old sessions."""
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


# -- the users file -----------------------------------------------------------------------------
def read_users_file(path: Path) -> UsersFile:
    if not path.exists():
        return UsersFile()
    try:
        return UsersFile.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as error:
        raise UserError(f"users file {path} is invalid: {error}") from None


def write_users_file(path: Path, users: UsersFile) -> None:
    """Atomic replace, readable by the owner only (it holds password hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".users-", suffix=".json")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(users.model_dump(), indent=2, sort_keys=True) + "\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def add_user(path: Path, name: str, role: Role, password: str, *, replace: bool = False) -> None:
    check_user_name(name)
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    check_password_strength(password)
    users = read_users_file(path)
    if name in users.users and not replace:
        raise UserError(f"user {name!r} exists (use --replace to change the password or role)")
    users.users[name] = StoredUser(role=role, password_hash=hash_password(password))
    write_users_file(path, users)


def remove_user(path: Path, name: str) -> None:
    users = read_users_file(path)
    if users.users.pop(name, None) is None:
        raise UserError(f"no user {name!r} in {path}")
    write_users_file(path, users)


# -- lookup at run time ----------------------------------------------------------------------------
class UserDirectory:
    """Who may log in: the users file (re-read when it changes) plus the config's users."""

    def __init__(self, users_file: Path, configured: dict[str, UserEntry]) -> None:
        self.users_file = users_file
        self._configured = {name: User(name, entry.role, entry.password_hash) for name, entry in configured.items()}
        self._from_file: dict[str, User] = {}
        self._file_stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        # Checked against when the user does not exist, so a wrong name costs as much as a wrong password.
        self._dummy_hash = hash_password(secrets.token_hex(16))
        self._reload_if_changed()

    def _file_signature(self) -> tuple[int, int] | None:
        try:
            status = self.users_file.stat()
        except FileNotFoundError:
            return None
        return status.st_mtime_ns, status.st_size

    def _reload_if_changed(self) -> None:
        signature = self._file_signature()
        with self._lock:
            if signature == self._file_stamp:
                return
            stored = read_users_file(self.users_file).users if signature else {}
            duplicates = sorted(set(stored) & set(self._configured))
            if duplicates:
                raise UserError(f"user(s) {', '.join(duplicates)} defined both in {self.users_file} and in the config")
            self._from_file = {name: User(name, entry.role, entry.password_hash) for name, entry in stored.items()}
            self._file_stamp = signature

    def get(self, name: str) -> User | None:
        try:
            self._reload_if_changed()
        except UserError:
            pass  # keep serving the last good file; the CLI reports the problem when it writes
        return self._configured.get(name) or self._from_file.get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        user = self.get(name)
        if user is None:
            check_password_hash(self._dummy_hash, password)
            return None
        return user if check_password_hash(user.password_hash, password) else None

    def count(self) -> int:
        self.get("")
        return len(self._configured) + len(self._from_file)
