"""The edge outbox on real SQLite: epochs and sequence numbers, order, bounds, dead letters, restarts."""

from __future__ import annotations

import shutil
import sqlite3
import time

import pytest

from edge.outbox import LEGACY_EPOCH, Outbox, OutboxLimits


def fill(outbox: Outbox, count: int, size: int = 10) -> None:
    for _ in range(count):
        seq = outbox.next_seq()
        outbox.append(seq, "t", bytes([seq % 256]) * size)


def test_a_restart_opens_a_new_epoch_and_keeps_the_old_rows(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    first_epoch = outbox.epoch
    fill(outbox, 3)
    outbox.remove(outbox.after(0, 1)[0].id)
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db")
    assert reopened.epoch != first_epoch and reopened.next_seq() == 0
    fill(reopened, 2)
    assert [(row.epoch, row.seq) for row in reopened.after(0, 10)] == [
        (first_epoch, 1), (first_epoch, 2), (reopened.epoch, 0), (reopened.epoch, 1)
    ]
    assert reopened.depth() == 4


def test_a_rolled_back_file_never_reuses_an_identity(tmp_path):
    """Power loss with synchronous=NORMAL can roll the file back; the next start is a new epoch anyway."""
    path = tmp_path / "outbox.db"
    outbox = Outbox(path)
    fill(outbox, 2)
    outbox.close()
    shutil.copy(path, tmp_path / "older.db")
    outbox = Outbox(path)
    fill(outbox, 3)
    identities = {(row.epoch, row.seq) for row in outbox.after(0, 10)}
    outbox.close()
    shutil.copy(tmp_path / "older.db", path)  # the roll-back: the last run's rows are gone
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"outbox.db{suffix}").unlink(missing_ok=True)
    restored = Outbox(path)
    fill(restored, 3)
    new = {(row.epoch, row.seq) for row in restored.after(0, 10) if row.epoch == restored.epoch}
    assert len(new) == 3 and not new & identities


def test_confirm_forgets_exactly_the_stored_rows_of_that_epoch(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    fill(outbox, 2)
    old_epoch = outbox.epoch
    outbox.close()
    outbox = Outbox(tmp_path / "outbox.db")
    fill(outbox, 4)
    assert outbox.confirm(outbox.epoch, 1) == 2
    assert outbox.confirm("another-epoch", 100) == 0
    assert [(row.epoch, row.seq) for row in outbox.after(0, 10)] == [(old_epoch, 0), (old_epoch, 1), (outbox.epoch, 2), (outbox.epoch, 3)]
    assert outbox.confirm(old_epoch, 0) == 1 and outbox.depth() == 3
    assert outbox.first_id() == outbox.after(0, 1)[0].id


def test_an_outbox_from_before_epochs_keeps_its_rows(tmp_path):
    path = tmp_path / "outbox.db"
    legacy = sqlite3.connect(path)
    now = time.time()
    legacy.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER NOT NULL UNIQUE, topic TEXT NOT NULL,"
        " payload BLOB NOT NULL, created_at REAL NOT NULL);"
        f"INSERT INTO outbox (seq, topic, payload, created_at) VALUES (7, 't', x'01', {now}), (8, 't', x'02', {now});"
    )
    legacy.commit()
    legacy.close()
    outbox = Outbox(path)
    assert [(row.epoch, row.seq, row.payload) for row in outbox.after(0, 10)] == [(LEGACY_EPOCH, 7, b"\x01"), (LEGACY_EPOCH, 8, b"\x02")]
    fill(outbox, 1)
    assert outbox.depth() == 3


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
