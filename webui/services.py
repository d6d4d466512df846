"""Everything the dashboard runs on, built once from the config and stopped in reverse order."""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from flask import current_app

from cloud.db import DatabaseError, DatabaseUrl
from cloud.schema import SchemaMissing
from cloud.store import DashboardStore
from contract.topics import Topics
from webui.broker import BrokerLink
from webui.commands import CommandLog, CommandSender
from webui.config import WebUIConfig
from webui.live import LiveHub
from webui.security import LoginThrottle
from webui.sessions import SessionStore
from webui.users import UserDirectory, UserError
from webui.vendor import VendorAssetMissing, plotly_js_path

log = logging.getLogger(__name__)

SCHEMA_POLL_S = 0.5

SECRET_KEY_BYTES = 32


EXIT_CONFIG, EXIT_DEPENDENCY, EXIT_RUNTIME = 2, 3, 4


class StartupError(RuntimeError):
    """The dashboard cannot start; the message says what to fix, ``exit_code`` what kind of problem it is."""

    def __init__(self, message: str, exit_code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Services:
    config: WebUIConfig
    topics: Topics
    store: DashboardStore
    users: UserDirectory
    hub: LiveHub
    commands: CommandSender
    throttle: LoginThrottle
    sessions: SessionStore
    plotly_js: Path
    secret_key: str
    broker: BrokerLink | None = None

    def stop(self) -> None:
        """Close streams first (they hold server threads), then the broker, then the store."""
        self.hub.close()
        if self.broker is not None:
            self.broker.stop()
        self.store.close()
        self.sessions.close()


def load_secret_key(config: WebUIConfig) -> str:
    """The configured key, else the key file, created (0600) on first start."""
    if config.auth.secret_key is not None:
        return config.auth.secret_key.get_secret_value()
    path = config.auth.secret_key_file
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(SECRET_KEY_BYTES)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    log.info("created a new session key in %s", path)
    return key


def open_store(config: WebUIConfig) -> DashboardStore:
    """The dashboard's part of the store. The ingest owns the schema: on a new install the dashboard
    may start first, so a database without a schema is waited for (``store.schema_wait_s``); one that
    is older or newer than this code is refused at once."""
    deadline = time.monotonic() + config.store.schema_wait_s
    while True:
        try:
            return DashboardStore(config.store.url)
        except SchemaMissing as error:
            if time.monotonic() >= deadline:
                raise _store_error(config, error) from None
            log.info("waiting for the ingest to create the database schema (%s)", error)
            time.sleep(SCHEMA_POLL_S)
        except (DatabaseError, OSError) as error:
            raise _store_error(config, error) from None


def _store_error(config: WebUIConfig, error: Exception) -> StartupError:
    where = DatabaseUrl.parse(config.store.url).redacted()  # never print a database password
    return StartupError(f"cannot open the store {where}: {error}", EXIT_RUNTIME)


def build_services(config: WebUIConfig, *, connect: bool = True) -> Services:
    """Open the store, load users, find plotly.js, and (``connect``) start the broker subscription."""
    try:
        plotly_js = plotly_js_path()
    except VendorAssetMissing as error:
        raise StartupError(str(error), EXIT_DEPENDENCY) from None
    try:
        users = UserDirectory(config.auth.users_file, config.auth.users)
        secret_key = load_secret_key(config)
        sessions = SessionStore(config.auth.sessions_path, config.auth.session_lifetime_s)
    except (UserError, OSError, sqlite3.Error) as error:
        raise StartupError(str(error)) from None
    if users.count() == 0:
        log.warning("no users yet: create one with `emq-webui create-user NAME --role admin`")
    topics = Topics(config.mqtt.topic_prefix)
    command_log = CommandLog(keep=config.commands.keep_replies)
    hub = LiveHub(topics, max_devices=config.live.max_devices, max_streams=config.server.max_streams, commands=command_log)
    store = open_store(config)
    broker = BrokerLink(config.mqtt, hub).start() if connect else None
    return Services(
        config=config,
        topics=topics,
        store=store,
        users=users,
        hub=hub,
        commands=CommandSender(broker, topics, command_log, config.commands.ack_timeout_s),
        throttle=login_throttle(config),
        sessions=sessions,
        plotly_js=plotly_js,
        secret_key=secret_key,
        broker=broker,
    )


def login_throttle(config: WebUIConfig) -> LoginThrottle:
    auth = config.auth
    return LoginThrottle(auth.login_free_attempts, auth.login_first_delay_s, auth.login_max_delay_s, auth.login_forget_after_s)


def current_services() -> Services:
    """The running app's services (inside a request)."""
    return current_app.extensions["emq"]
