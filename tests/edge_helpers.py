"""Helpers to run the real edge agent (``emq-edge``) as a process against the test broker."""

from __future__ import annotations

import sqlite3
from contextlib import closing
import subprocess
from pathlib import Path

from contract.validation import parse_result
from tests.conftest import component_env, start_service


def agent_env(pki_dir: Path, port: int, data_dir: Path, device_id: str = "cam-a", **settings: str) -> dict[str, str]:
    """Configure the agent through EMQ_EDGE__* variables (the path users take in containers).

    Tests that watch the broker side with a plain subscriber keep results only
    until the broker acknowledges them; tests with the real ingest pass
    ``OUTBOX__KEEP_UNTIL="stored"`` (the product's default) and prove more.
    """
    return component_env("EMQ_EDGE__", {
        "DEVICE_ID": device_id, "PKI_DIR": pki_dir, "DATA_DIR": data_dir, "MQTT__HOST": "localhost", "MQTT__PORT": port,
        "MQTT__RECONNECT_MIN_DELAY_S": 0.1, "MQTT__RECONNECT_MAX_DELAY_S": 0.5, "PUBLISH__STATS_INTERVAL_S": 1,
        "OUTBOX__KEEP_UNTIL": "acknowledged", **settings,
    })


def start_agent(env: dict[str, str], log_path: Path, *arguments: str) -> subprocess.Popen:
    return start_service("emq-edge", env, log_path, *arguments)


def outbox_depth(data_dir: Path, device_id: str = "cam-a") -> int:
    """Read the agent's outbox from outside (WAL mode allows a concurrent reader)."""
    path = data_dir / device_id / "outbox.db"
    if not path.exists():
        return 0
    # A plain connection, not mode=ro: a read-only one cannot open a WAL file whose -shm is gone (a
    # restored copy) and reports "disk I/O error", which must never read as "empty".
    with closing(sqlite3.connect(path, timeout=5)) as database:
        if not database.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone():
            return 0  # the agent has not created it yet
        return database.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


def produced_by_epoch(data_dir: Path, device_id: str = "cam-a") -> dict[str, int]:
    """How many results each run (epoch) of the agent numbered, in the order the runs started."""
    path = data_dir / device_id / "outbox.db"
    with closing(sqlite3.connect(path, timeout=5)) as database:
        return dict(database.execute("SELECT epoch, next_seq FROM epochs ORDER BY started_at, rowid").fetchall())


def produced_count(data_dir: Path, device_id: str = "cam-a") -> int:
    """How many results the agent has numbered so far, over all its runs."""
    return sum(produced_by_epoch(data_dir, device_id).values())


def unique_results(messages) -> list:
    """Results in arrival order with transport redeliveries removed.

    QoS 1 is at-least-once: a result whose PUBACK was lost when the broker went
    down is sent again, byte for byte, with the same msg_id. Consumers dedupe
    on msg_id; so do we, after checking the copies really are identical.
    """
    first_seen: dict[str, bytes] = {}
    results = []
    for message in messages:
        result = parse_result(message.payload)
        if result.msg_id in first_seen:
            assert first_seen[result.msg_id] == message.payload, f"seq {result.seq}: same msg_id, different content"
            continue
        first_seen[result.msg_id] = message.payload
        results.append(result)
    return results


def assert_complete_once(messages, expected_count: int | None = None) -> list[int]:
    """Every result exactly once after dedupe; per run (epoch), in order from 0, no seq gaps, none used twice."""
    by_epoch: dict[str, list[int]] = {}
    for result in unique_results(messages):
        by_epoch.setdefault(result.epoch, []).append(result.seq)
    assert by_epoch, "no results"
    for epoch, seqs in by_epoch.items():
        expected = list(range(len(seqs)))
        if seqs != expected:
            missing = sorted(set(range(max(seqs) + 1)) - set(seqs))[:10]
            reused = sorted({seq for seq in seqs if seqs.count(seq) > 1})[:10]
            out_of_order = [(a, b) for a, b in zip(seqs, seqs[1:]) if b <= a][:5]
            raise AssertionError(f"epoch {epoch}: missing {missing}, seq reused {reused}, out of order {out_of_order}")
    total = sum(len(seqs) for seqs in by_epoch.values())
    if expected_count is not None:
        assert total == expected_count, f"{total} results, expected {expected_count}"
    return [seq for seqs in by_epoch.values() for seq in seqs]


def run_agent(spawned, env: dict[str, str], tmp_path: Path, *arguments: str) -> subprocess.Popen:
    """``emq-edge`` logging to ``tmp_path/agent.log``, killed at the test's end (``spawned``)."""
    process = start_agent(env, tmp_path / "agent.log", *arguments)
    spawned.append(process)
    return process


def agent_log(tmp_path: Path) -> str:
    path = tmp_path / "agent.log"
    return path.read_text(errors="replace") if path.exists() else ""
