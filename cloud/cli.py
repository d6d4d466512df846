"""``emq-ingest``: run one cloud ingest worker.

    emq-ingest [--config ingest.toml] [--worker-name 2] [--shared-group ingest] [--database-url URL]
    emq-ingest --worker-name 2 --shared-group ingest --retire   # after stopping worker 2 for good

Settings: TOML file, then ``EMQ_INGEST__*`` environment variables, then these
flags. Several workers share the stream with the same ``--shared-group`` and
distinct ``--worker-name``s. ``--retire`` hands in what the broker still holds
for a worker that will not come back (see IngestService.retire). Exit codes:
0 on SIGINT/SIGTERM (or a finished retirement), 2 bad config, 3 database
unreachable, 4 retirement failed (the session is left as it was).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cloud.config import ENV_PREFIX, IngestConfig
from cloud.db import DatabaseError
from cloud.ingest import IngestService
from comms import speedups
from common.cli import configure_logging, load_or_exit, print_config, stop_on_signals

EXIT_DATABASE = 3
EXIT_RETIRE_FAILED = 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emq-ingest", description="Store every device message for history and retraining.")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--worker-name", help="override worker_name (identity and client id ingest-<name>)")
    parser.add_argument("--shared-group", help="override shared_group")
    parser.add_argument("--database-url", help="override database_url")
    parser.add_argument("--retire", action="store_true", help="store what the broker holds for this (stopped) worker, then end its session")
    parser.add_argument("--print-config", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    chosen = {"worker_name": args.worker_name, "shared_group": args.shared_group, "database_url": args.database_url}
    return {key: value for key, value in chosen.items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)
    config = load_or_exit(IngestConfig, args.config, ENV_PREFIX, _overrides(args), "emq-ingest")
    if args.print_config:
        print_config(config)
        return 0
    speedups.enable()  # this process receives thousands of messages a second; it logs why if it refuses
    stop_event = stop_on_signals("cloud")
    try:
        if args.retire:
            return _retire(IngestService(config, stop_event))
        IngestService(config, stop_event).run()
    except DatabaseError as error:
        print(f"emq-ingest: {error}", file=sys.stderr)
        return EXIT_DATABASE
    return 0


def _retire(service: IngestService) -> int:
    try:
        totals = service.retire()
    except RuntimeError as error:
        print(f"emq-ingest: retiring {service.config.mqtt.client_id} failed: {error}", file=sys.stderr)
        return EXIT_RETIRE_FAILED
    print(f"retired {service.config.mqtt.client_id}: stored {totals['results']} results, {totals['frames']} frames,"
          f" quarantined {totals['quarantined']}; its session is gone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
