"""``--set KEY=VALUE`` for the benchmarks: detection settings of the edge, to try a schedule on the face set.

One parser for every benchmark, validated against the edge's own ``DetectionSettings`` before any work
starts, so a typo is a clear error, not a default silently used.
"""

from __future__ import annotations

import argparse


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a detection setting of our side (e.g. search_every_n=2); repeatable")


def detection_overrides(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """The ``--set`` items as a dict of DetectionSettings fields; ``parser.error`` on a bad one."""
    overrides: dict[str, str] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = value.strip()
    if overrides:
        from pydantic import ValidationError

        from edge.perception.settings import DetectionSettings

        try:
            DetectionSettings.model_validate(overrides)
        except ValidationError as error:
            parser.error(f"--set: {error}")
    return overrides
