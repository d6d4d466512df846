"""``emq-webui``: run the dashboard and manage its users.

    emq-webui [serve] [--config webui.toml] [--host H] [--port P] [--print-config] [-v]
    emq-webui create-user NAME [--role viewer|labeller|admin] [--password-stdin] [--replace] [--if-missing]
    emq-webui delete-user NAME
    emq-webui list-users
    emq-webui hash-password [--password-stdin]

Settings: TOML file, then ``EMQ_WEBUI__*`` environment variables (e.g.
``EMQ_WEBUI__SERVER__PORT=8081``), then these flags. ``create-user`` without
``--password-stdin`` generates a strong password and prints it once.
Exit codes: 0 done, 1 refused user change, 2 bad config or start-up
problem, 3 a dependency is missing, 4 cannot listen or open the store.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from common.config import ConfigError, load_config
from webui.config import ENV_PREFIX, ROLES, AuthOnlyConfig, WebUIConfig
from webui.services import EXIT_CONFIG, EXIT_RUNTIME, StartupError, build_services
from webui.users import (
    UserError,
    add_user,
    generate_password,
    hash_password,
    read_users_file,
    remove_user,
)

EXIT_REFUSED = 1
COMMANDS = ("serve", "create-user", "delete-user", "list-users", "hash-password")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML config file")
    common.add_argument("-v", "--verbose", action="store_true")
    parser = argparse.ArgumentParser(prog="emq-webui", description="Web dashboard: live devices, history, labelling, device control.")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, parents=[common])

    serve = add("serve", "run the dashboard (the default)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--print-config", action="store_true", help="print the effective config as JSON and exit")

    create = add("create-user", "add a user to the users file")
    create.add_argument("name")
    create.add_argument("--role", choices=ROLES, default="viewer")
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input instead of generating one")
    create.add_argument("--replace", action="store_true", help="change the password/role of an existing user")
    create.add_argument("--if-missing", action="store_true", help="do nothing (exit 0) if the user exists: for setup scripts")
    create.add_argument("--users-file", type=Path, help="override auth.users_file")

    delete = add("delete-user", "remove a user (their sessions end at once)")
    delete.add_argument("name")
    delete.add_argument("--users-file", type=Path)

    listing = add("list-users", "list users and roles")
    listing.add_argument("--users-file", type=Path)

    hashing = add("hash-password", "print a password hash for EMQ_WEBUI__AUTH__USERS__<NAME>__PASSWORD_HASH")
    hashing.add_argument("--password-stdin", action="store_true")
    return parser


def _with_default_command(argv: list[str]) -> list[str]:
    """``emq-webui`` and ``emq-webui --port 9000`` mean ``serve``."""
    if argv[:1] and (argv[0] in COMMANDS or argv[0] in ("-h", "--help")):
        return argv
    return ["serve", *argv]


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise UserError("the passwords differ")
    return first


def _users_file(args: argparse.Namespace) -> Path:
    if getattr(args, "users_file", None):
        return args.users_file
    return load_config(AuthOnlyConfig, args.config, env_prefix=ENV_PREFIX).auth.users_file


# -- user commands ----------------------------------------------------------------------------
def create_user(args: argparse.Namespace) -> int:
    path = _users_file(args)
    if args.if_missing and args.name in read_users_file(path).users:
        print(f"user {args.name!r} exists in {path}; unchanged")
        return 0
    generated = not args.password_stdin
    password = generate_password() if generated else _read_password(True)
    add_user(path, args.name, args.role, password, replace=args.replace)
    print(f"created user {args.name!r} with role {args.role} in {path}")
    if generated:
        print(f"password (shown once, store it now): {password}")
    return 0


def delete_user(args: argparse.Namespace) -> int:
    path = _users_file(args)
    remove_user(path, args.name)
    print(f"removed user {args.name!r} from {path}")
    return 0


def list_users(args: argparse.Namespace) -> int:
    path = _users_file(args)
    for name, user in sorted(read_users_file(path).users.items()):
        print(f"{name}\t{user.role}\t{user.created_at}")
    return 0


def print_hash(args: argparse.Namespace) -> int:
    print(hash_password(_read_password(args.password_stdin)))
    return 0


# -- serve ---------------------------------------------------------------------------------------
def _serve_overrides(args: argparse.Namespace) -> dict:
    server = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    return {"server": server} if server else {}


def _printable(config: WebUIConfig) -> str:
    data = config.model_dump(mode="json")
    for user in data["auth"]["users"].values():
        user["password_hash"] = "**********"
    return json.dumps(data, indent=2)


def _install_signal_handlers(stop_event: threading.Event) -> None:
    def request_stop(signum, _frame) -> None:
        logging.getLogger("webui").info("received %s: stopping", signal.Signals(signum).name)
        stop_event.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)


def serve(args: argparse.Namespace) -> int:
    """Validate everything, start the broker subscription and waitress, run until SIGINT/SIGTERM."""
    config = load_config(WebUIConfig, args.config, env_prefix=ENV_PREFIX, overrides=_serve_overrides(args))
    if args.print_config:
        print(_printable(config))
        return 0
    from webui.app import create_app  # imports Flask only when serving
    from webui.server import WebServer

    services = build_services(config)
    try:
        app = create_app(config, services=services)
        server = WebServer(app, config.server)
        if config.server.metrics_port:
            app.extensions["emq_metrics"].serve(config.server.metrics_port, config.server.metrics_address)
    except OSError as error:
        services.stop()
        raise StartupError(f"cannot listen on {config.server.host}:{config.server.port}: {error.strerror or error}", EXIT_RUNTIME) from None
    _warn_if_exposed(config)
    stop_event = threading.Event()
    _install_signal_handlers(stop_event)
    server.start()
    print(f"emq-webui: serving on {server.url} (broker {config.mqtt.host}:{config.mqtt.port})", flush=True)
    stop_event.wait()
    server.stop()
    return 0


def _warn_if_exposed(config: WebUIConfig) -> None:
    if not config.server.is_loopback and not config.auth.secure_cookies:
        logging.getLogger("webui").warning(
            "listening on %s without secure cookies: serve it behind HTTPS and set auth.secure_cookies = true", config.server.host
        )


HANDLERS = {"serve": serve, "create-user": create_user, "delete-user": delete_user, "list-users": list_users, "hash-password": print_hash}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``emq-webui`` (and ``python -m webui``)."""
    args = _parser().parse_args(_with_default_command(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("paho").setLevel(logging.WARNING)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" is normal with open streams
    try:
        return HANDLERS[args.command](args)
    except ConfigError as error:
        print(f"emq-webui: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as error:
        print(f"emq-webui: {error}", file=sys.stderr)
        return error.exit_code
    except UserError as error:
        print(f"emq-webui: {error}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
