"""``emq-edge``: run the edge agent.

    emq-edge [--config edge.toml] [--source SPEC] [--device-id ID] [--loop] [--pace] [--print-config]

Settings: TOML file, then ``EMQ_EDGE__*`` environment variables (e.g.
``EMQ_EDGE__MQTT__HOST=broker.example.org``), then these flags. Exit codes:
0 done (end of input or SIGINT/SIGTERM), 2 bad config, 3 no usable model,
4 source cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from common.config import ConfigError, load_config
from edge.agent import EdgeAgent
from edge.config import ENV_PREFIX, EdgeConfig
from edge.model import ModelUnavailable
from edge.sources import SourceError

EXIT_CONFIG, EXIT_MODEL, EXIT_SOURCE = 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emq-edge", description="Edge agent: video → emotions → MQTT over TLS.")
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--source", help="override source.spec (camera index, file, URL, gst:…, folder)")
    parser.add_argument("--device-id", help="override device_id")
    parser.add_argument("--loop", action="store_true", help="repeat the file/folder forever")
    parser.add_argument("--pace", action="store_true", help="play video files at their own frame rate")
    parser.add_argument("--print-config", action="store_true", help="print the effective config as JSON and exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    overrides: dict = {}
    if args.device_id:
        overrides["device_id"] = args.device_id
    source = {}
    if args.source:
        source["spec"] = args.source
    if args.loop:
        source["loop"] = True
    if args.pace:
        source["pace"] = True
    if source:
        overrides["source"] = source
    return overrides


def _install_signal_handlers(stop_event: threading.Event) -> None:
    def request_stop(signum, _frame) -> None:
        logging.getLogger("edge").info("received %s: stopping", signal.Signals(signum).name)
        stop_event.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("paho").setLevel(logging.WARNING)
    try:
        config = load_config(EdgeConfig, args.config, env_prefix=ENV_PREFIX, overrides=_overrides(args))
    except ConfigError as error:
        print(f"emq-edge: {error}", file=sys.stderr)
        return EXIT_CONFIG
    if args.print_config:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    stop_event = threading.Event()
    _install_signal_handlers(stop_event)
    try:
        EdgeAgent(config, stop_event).run()
    except ModelUnavailable as error:
        print(f"emq-edge: {error}", file=sys.stderr)
        return EXIT_MODEL
    except SourceError as error:
        print(f"emq-edge: cannot open source {config.source.spec!r}: {error}", file=sys.stderr)
        return EXIT_SOURCE
    return 0


if __name__ == "__main__":
    sys.exit(main())
