"""``emq-broker``: render the Mosquitto config from settings, or run Mosquitto on it.

    emq-broker render [--config broker.toml]   write var/broker/mosquitto.conf + acl
    emq-broker run    [--config broker.toml]   render, then run Mosquitto in the foreground
    emq-broker check  [--config broker.toml]   validate settings and PKI, print the plan

Settings come from the TOML file and ``EMQ_BROKER__*`` environment variables.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from broker.config import BrokerSettings, render_all
from broker.runner import BrokerError, mosquitto_binary
from common.config import ConfigError, load_config

ENV_PREFIX = "EMQ_BROKER__"


def load_settings(path: Path | None) -> BrokerSettings:
    return load_config(BrokerSettings, path, env_prefix=ENV_PREFIX)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emq-broker", description="Render or run the project's Mosquitto broker.")
    parser.add_argument("action", choices=("render", "run", "check"))
    parser.add_argument("--config", type=Path, help="broker TOML settings (optional)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        conf = render_all(settings)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"emq-broker: {error}", file=sys.stderr)
        return 2
    if args.action == "check":
        print(f"config ok: TLS (client certificates) on {settings.bind_address}:{settings.tls_port}"
              + (f", TLS (passwords) on :{settings.password_port}" if settings.password_port else ""))
        return 0
    if args.action == "render":
        print(conf)
        return 0
    try:
        binary = mosquitto_binary()
    except BrokerError as error:
        print(f"emq-broker: {error}", file=sys.stderr)
        return 2
    log_place = f"log {settings.log_file}" if settings.log_file else f"log on {settings.log_dest}"
    print(f"emq-broker: mosquitto on {settings.bind_address}:{settings.tls_port} (TLS), config {conf}, {log_place}", flush=True)
    os.execv(binary, [binary, "-c", str(conf)])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
