"""``emq-pki``: create and manage the broker's PKI and identities.

    emq-pki init [--dir var/pki] [--host broker.example.org ...] [--device cam-1 ...]
    emq-pki add DEVICE_ID [--role device]           issue a client certificate
    emq-pki revoke NAME                             revoke it (CRL) and drop its password
    emq-pki passwd NAME --role ROLE [--password-file F | stdin]   password login instead
    emq-pki list

Re-running ``init`` is safe: existing keys and valid certificates are kept.
After add/revoke/passwd, reload a running broker: ``kill -HUP $(pidof mosquitto)``
(the ACL and CRL are re-read; `emq-broker render` re-renders the ACL).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from broker.identities import IdentityError, IdentityRegistry, Role, describe, init_pki
from broker.pki import PkiPaths, write_crl
from comms.settings import default_pki_dir
from contract.topics import InvalidDeviceId


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emq-pki", description="Manage the broker PKI and identities.")
    parser.add_argument("--dir", type=Path, default=default_pki_dir(), help="PKI folder (default: $EMQ_PKI_DIR or var/pki)")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create CA, broker certificate, service identities (idempotent)")
    init.add_argument("--host", action="append", default=[], help="extra broker host name or IP for the certificate SAN")
    init.add_argument("--device", action="append", default=[], help="device identity to create")
    add = commands.add_parser("add", help="issue a client certificate")
    add.add_argument("name")
    add.add_argument("--role", choices=[role.value for role in Role], default=Role.DEVICE.value)
    revoke = commands.add_parser("revoke", help="revoke an identity")
    revoke.add_argument("name")
    password = commands.add_parser("passwd", help="set a password for an identity (password listener)")
    password.add_argument("name")
    password.add_argument("--role", choices=[role.value for role in Role], required=True)
    password.add_argument("--password-file", type=Path, help="read the password from this file (else stdin/prompt)")
    commands.add_parser("list", help="list identities")
    return parser


def _read_password(path: Path | None) -> str:
    if path is not None:
        return path.read_text().strip()
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    return sys.stdin.readline().strip()


def run(args: argparse.Namespace) -> list[str]:
    paths = PkiPaths(args.dir)
    if args.command == "init":
        return init_pki(args.dir, devices=args.device, hosts=args.host) or ["PKI already complete; nothing changed"]
    if args.command == "list":
        return describe(paths)
    registry = IdentityRegistry(paths)
    if args.command == "add":
        changed = registry.ensure(args.name, Role(args.role))
        message = f"issued {paths.client_cert(args.name)}" if changed else f"{args.name} already has a valid certificate"
    elif args.command == "revoke":
        registry.revoke(args.name)
        message = f"revoked {args.name}"
    else:
        password = _read_password(args.password_file)
        if len(password) < 8:
            raise IdentityError("password must have at least 8 characters")
        registry.set_password(args.name, Role(args.role), password)
        message = f"password set for {args.name}"
    registry.save()
    write_crl(paths, registry.revoked_serials())
    return [message]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        for line in run(args):
            print(line)
    except (IdentityError, InvalidDeviceId, OSError) as error:
        print(f"emq-pki: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
