"""``emq-edge``: run the edge agent.

    emq-edge [--config edge.toml] [--source SPEC] [--device-id ID] [--loop] [--pace] [--print-config]

Settings: TOML file, then ``EMQ_EDGE__*`` environment variables (e.g.
``EMQ_EDGE__MQTT__HOST=broker.example.org``), then these flags. Exit codes:
0 done (end of input or SIGINT/SIGTERM), 2 bad config, 3 no usable model,
4 source cannot be opened or has no readable frame (e.g. a folder of broken images).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import configure_logging, load_or_exit, print_config, stop_on_signals
from edge.assembly import build_edge
from edge.config import ENV_PREFIX, EdgeConfig
from edge.model import ModelUnavailable
from edge.perception.detector import DetectorError
from edge.sources import SourceError

EXIT_MODEL, EXIT_SOURCE = 3, 4


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)
    config = load_or_exit(EdgeConfig, args.config, ENV_PREFIX, _overrides(args), "emq-edge")
    if args.print_config:
        print_config(config)
        return 0
    stop_event = stop_on_signals("edge")
    try:
        build_edge(config, stop_event).run()
    except (ModelUnavailable, DetectorError) as error:  # the emotion model, or the face detector's files
        print(f"emq-edge: {error}", file=sys.stderr)
        return EXIT_MODEL
    except SourceError as error:
        print(f"emq-edge: cannot open source {config.source.spec!r}: {error}", file=sys.stderr)
        return EXIT_SOURCE
    return 0


if __name__ == "__main__":
    sys.exit(main())
