"""``emq-db``: the cloud database's schema, explicitly.

    emq-db migrate [--database-url URL]   create or upgrade the schema (emq-ingest also does on start)
    emq-db version [--database-url URL]   print the stored schema version and this code's

The URL defaults to the ingest's (``EMQ_INGEST__DATABASE_URL`` or
sqlite:///var/cloud/emotion.db). Exit codes: 0 done, 3 database unreachable or
its schema unusable (the message says why).
"""

from __future__ import annotations

import argparse
import os
import sys

from cloud import schema
from cloud.db import Database, DatabaseError

DEFAULT_URL = "sqlite:///var/cloud/emotion.db"
EXIT_DATABASE = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emq-db", description="Create, upgrade or inspect the cloud database schema.")
    parser.add_argument("command", choices=["migrate", "version"])
    parser.add_argument("--database-url", default=os.environ.get("EMQ_INGEST__DATABASE_URL", DEFAULT_URL))
    args = parser.parse_args(argv)
    try:
        database = Database(args.database_url)
        try:
            if args.command == "migrate":
                print(f"schema version {schema.migrate(database)} in {database.url.redacted()}")
            else:
                print(f"stored {schema.stored_version(database)}, this code {schema.SCHEMA_VERSION}")
        finally:
            database.close()
    except DatabaseError as error:
        print(f"emq-db: {error}", file=sys.stderr)
        return EXIT_DATABASE
    return 0


if __name__ == "__main__":
    sys.exit(main())
