"""The edge outbox on real SQLite: sequence numbers, order, bounds, dead letters, restarts."""

from __future__ import annotations

import pytest

from edge.outbox import Outbox, OutboxLimits


def fill(outbox: Outbox, count: int, size: int = 10) -> None:
    for _ in range(count):
        seq = outbox.next_seq()
        outbox.append(seq, "t", bytes([seq % 256]) * size)


def test_sequence_numbers_survive_a_restart(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    fill(outbox, 3)
    outbox.remove(outbox.after(0, 1)[0].id)
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db")
    assert reopened.next_seq() == 3
    assert [row.seq for row in reopened.after(0, 10)] == [1, 2]
    assert reopened.depth() == 2


def test_a_sequence_number_is_never_reused(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    fill(outbox, 2)
    with pytest.raises(ValueError):
        outbox.append(1, "t", b"again")
    assert outbox.next_seq() == 2


def test_drop_oldest_when_over_the_message_limit(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db", OutboxLimits(max_messages=5))
    fill(outbox, 8)
    assert [row.seq for row in outbox.after(0, 100)] == [3, 4, 5, 6, 7]
    assert outbox.dropped == 3 and outbox.next_seq() == 8


def test_drop_oldest_when_over_the_byte_limit(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db", OutboxLimits(max_bytes=100))
    fill(outbox, 12, size=10)
    assert outbox.depth() == 10 and outbox.dropped == 2


def test_drop_expired_rows(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db", OutboxLimits(max_age_s=60))
    fill(outbox, 2)
    outbox._db.execute("UPDATE outbox SET created_at = created_at - 3600")  # age the rows by an hour
    fill(outbox, 1)
    assert [row.seq for row in outbox.after(0, 10)] == [2]
    assert outbox.dropped == 2


def test_rejected_rows_move_to_dead_letter(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    fill(outbox, 2)
    first = outbox.after(0, 1)[0]
    outbox.move_to_dead_letter(first, "not authorised")
    assert outbox.depth() == 1 and outbox.dead_letters() == 1
    assert [row.seq for row in outbox.after(0, 10)] == [1]
