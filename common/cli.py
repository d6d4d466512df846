"""What every ``emq-*`` service command does the same way: logging, config loading, stop signals."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from common.config import ConfigError, load_config

ConfigModel = TypeVar("ConfigModel", bound=BaseModel)
EXIT_CONFIG = 2


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("paho").setLevel(logging.WARNING)


def load_or_exit(model: type[ConfigModel], path: Path | None, env_prefix: str, overrides: dict[str, Any], program: str) -> ConfigModel:
    """The validated config, or every problem on stderr and exit code 2."""
    try:
        return load_config(model, path, env_prefix=env_prefix, overrides=overrides)
    except ConfigError as error:
        print(f"{program}: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def print_config(config: BaseModel) -> None:
    """The effective config as JSON (secrets masked by pydantic's SecretStr)."""
    print(json.dumps(config.model_dump(mode="json"), indent=2))


def stop_on_signals(logger_name: str) -> threading.Event:
    """An event set by SIGINT/SIGTERM, so long-running loops can finish cleanly."""
    stop_event = threading.Event()

    def request_stop(signum, _frame) -> None:
        logging.getLogger(logger_name).info("received %s: stopping", signal.Signals(signum).name)
        stop_event.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop_event
