"""Helpers to run the real edge agent (``emq-edge``) as a process against the test broker."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from contract.validation import parse_result
from tests.conftest import component_env, start_service


def agent_env(pki_dir: Path, port: int, data_dir: Path, device_id: str = "cam-a", **settings: str) -> dict[str, str]:
    """Configure the agent through EMQ_EDGE__* variables (the path users take in containers)."""
    return component_env("EMQ_EDGE__", {
        "DEVICE_ID": device_id, "PKI_DIR": pki_dir, "DATA_DIR": data_dir, "MQTT__HOST": "localhost", "MQTT__PORT": port,
        "MQTT__RECONNECT_MIN_DELAY_S": 0.1, "MQTT__RECONNECT_MAX_DELAY_S": 0.5, "PUBLISH__STATS_INTERVAL_S": 1, **settings,
    })


def start_agent(env: dict[str, str], log_path: Path, *arguments: str) -> subprocess.Popen:
    return start_service("emq-edge", env, log_path, *arguments)


def outbox_depth(data_dir: Path, device_id: str = "cam-a") -> int:
    """Read the agent's outbox from outside (WAL mode allows a concurrent reader)."""
    path = data_dir / device_id / "outbox.db"
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as database:
        try:
            return database.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def produced_count(data_dir: Path, device_id: str = "cam-a") -> int:
    """How many results the agent has numbered so far (the outbox's next seq)."""
    path = data_dir / device_id / "outbox.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as database:
        row = database.execute("SELECT value FROM counters WHERE name = 'next_seq'").fetchone()
    return row[0] if row else 0


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
    """Every result exactly once after dedupe, in order, no seq gaps, no seq used twice."""
    seqs = [result.seq for result in unique_results(messages)]
    assert seqs, "no results"
    expected = list(range(len(seqs))) if expected_count is None else list(range(expected_count))
    if seqs != expected:
        missing = sorted(set(expected) - set(seqs))[:10]
        reused = sorted({seq for seq in seqs if seqs.count(seq) > 1})[:10]
        out_of_order = [(a, b) for a, b in zip(seqs, seqs[1:]) if b <= a][:5]
        raise AssertionError(f"results incomplete: missing {missing}, seq reused {reused}, out of order {out_of_order}")
    return seqs
