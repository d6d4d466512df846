"""cloud.db's bulk insert on both engines: the rows, the types, NULLs, conflicts, RETURNING, SQLite's parameter limit."""

from __future__ import annotations

import pytest

from cloud.db import Database
from tests.cloud_helpers import database_url  # noqa: F401 (fixture)

COLUMNS = (("name", "text"), ("count", "bigint"), ("small", "integer"), ("score", "real"), ("data", "blob"))


@pytest.fixture
def db(database_url):  # noqa: F811
    database = Database(database_url)
    database.execute("CREATE TABLE items (id %s, name TEXT NOT NULL UNIQUE, count BIGINT, small INTEGER, score %s, data %s)"
                     % (database.types["id"], database.types["real"], database.types["blob"]))
    yield database
    database.close()


def test_rows_arrive_with_their_types_and_nulls(db):
    rows = [("a", 2**40, 7, 0.25, b"\x00\xff quote\" back\\slash"), ("b", None, None, None, None), ('c "quoted" {x}', -1, 0, -1.5, b"")]
    with db.transaction():
        returned = db.insert_rows("items", COLUMNS, rows, "RETURNING name, id")
    assert sorted(name for name, _ in returned) == sorted(row[0] for row in rows)
    stored = {row[0]: tuple(row) for row in db.query("SELECT name, count, small, score, data FROM items")}
    for row in rows:
        name, count, small, score, data = stored[row[0]]
        assert (name, count, small, score) == row[:4]
        assert (None if data is None else bytes(data)) == row[4]


def test_conflicting_rows_are_skipped_and_not_returned(db):
    db.insert_rows("items", COLUMNS, [("a", 1, 1, 1.0, b"x")])
    with db.transaction():
        returned = db.insert_rows("items", COLUMNS, [("a", 2, 2, 2.0, b"y"), ("b", 3, 3, 3.0, b"z")],
                                  "ON CONFLICT DO NOTHING RETURNING name, id")
    assert [name for name, _ in returned] == ["b"]
    assert db.scalar("SELECT count FROM items WHERE name = ?", ("a",)) == 1


def test_no_rows_is_no_statement(db):
    assert db.insert_rows("items", COLUMNS, [], "RETURNING id") == []
    assert db.scalar("SELECT COUNT(*) FROM items") == 0


def test_more_rows_than_one_sqlite_statement_takes(db):
    # 8,000 rows x 5 columns = 40,000 parameters: over SQLite's 32,766 per statement.
    rows = [(f"item-{index}", index, index % 100, index / 2, bytes([index % 256])) for index in range(8000)]
    with db.transaction():
        returned = db.insert_rows("items", COLUMNS, rows, "RETURNING id")
    assert len(returned) == 8000
    assert db.scalar("SELECT COUNT(*) FROM items") == 8000
    assert db.scalar("SELECT count FROM items WHERE name = ?", ("item-7999",)) == 7999


def test_inside_a_postgresql_pipeline_the_returned_rows_are_read(db):
    with db.pipeline(), db.transaction():
        returned = db.insert_rows("items", COLUMNS, [("p", 1, 1, 1.0, b"1"), ("q", 2, 2, 2.0, b"2")], "RETURNING name, id")
        db.insert_rows("items", COLUMNS, [("r", 3, 3, 3.0, b"3")])
    assert sorted(name for name, _ in returned) == ["p", "q"]
    assert db.scalar("SELECT COUNT(*) FROM items") == 3
