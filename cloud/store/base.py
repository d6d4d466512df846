"""What every part of the store shares: one database, opened for its client, its schema checked."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from cloud import schema
from cloud.db import Database

Record = TypeVar("Record")


class StorePart:
    """One client's view of the cloud database (the ingest's writes, the dashboard's reads, …).

    ``migrate=True`` creates or upgrades the schema (the ingest, ``emq-db
    migrate``); otherwise the schema must already be this code's version,
    or opening fails with :class:`cloud.schema.SchemaError` saying what to run.
    """

    def __init__(self, url: str | Database, *, migrate: bool = False) -> None:
        self.db = url if isinstance(url, Database) else Database(url)
        try:
            schema.migrate(self.db) if migrate else schema.check(self.db)
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def transaction(self):
        return self.db.transaction()

    def _records(self, build: Callable[[dict[str, Any]], Record], statement: str, parameters=()) -> list[Record]:
        return [build(columns) for columns in self.db.query_named(statement, parameters)]

    def _record(self, build: Callable[[dict[str, Any]], Record], statement: str, parameters=()) -> Record | None:
        records = self._records(build, statement, parameters)
        return records[0] if records else None
