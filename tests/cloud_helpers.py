"""Helpers for the cloud tests: databases (SQLite, and PostgreSQL when reachable), ingest processes, payloads."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from contract.validation import FrameMeta
from tests.conftest import component_env, free_port, start_service

POSTGRES_ADMIN_URL = os.environ.get("EMQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_reachable() -> str | None:
    """None if usable, else the reason to skip."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            pass
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as error:  # refused, auth, …
        return f"PostgreSQL at 127.0.0.1:5432 is not usable: {error}"


def create_postgres_database() -> tuple[str, str]:
    """A fresh database for one test; returns (url, name)."""
    import psycopg

    name = f"emq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", name


def drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.db'}"
        return
    reason = postgres_reachable()
    if reason:
        pytest.skip(reason)
    url, name = create_postgres_database()
    yield url
    drop_postgres_database(name)


def ingest_env(pki_dir: Path, port: int, data_dir: Path, database_url: str, **settings: str) -> dict[str, str]:
    return component_env("EMQ_INGEST__", {
        "PKI_DIR": pki_dir, "DATA_DIR": data_dir, "DATABASE_URL": database_url, "MQTT__HOST": "localhost", "MQTT__PORT": port,
        "MQTT__RECONNECT_MIN_DELAY_S": 0.1, "MQTT__RECONNECT_MAX_DELAY_S": 0.5, "REPORT_INTERVAL_S": 1,
        "METRICS_PORT": free_port(), **settings,
    })


def start_ingest(env: dict[str, str], log_path: Path, *arguments: str) -> subprocess.Popen:
    return start_service("emq-ingest", env, log_path, *arguments)


def jpeg_b64(seed: int = 0, width: int = 96, height: int = 64) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    return base64.b64encode(jpeg.tobytes())


def frame_properties(frame_number: int, result=None) -> list[tuple[str, str]]:
    meta = FrameMeta(
        frame_number=frame_number,
        captured_at="2026-11-22T03:47:13.123Z",
        result_seq=result.seq if result else None,
        result_msg_id=result.msg_id if result else "",
    )
    return meta.to_properties()
