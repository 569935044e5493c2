"""`secure-assist keys`: make and manage TLS identities and the server's device allow-list."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the module loads `cryptography`; the handler imports it when a keys action runs
    from protocol.transport.identity import KeyDirectory


def _init(keys: KeyDirectory, args: argparse.Namespace) -> dict:
    keys.init([name for name in args.devices.split(",") if name])
    return _show(keys, args)


def _add(keys: KeyDirectory, args: argparse.Namespace) -> dict:
    fingerprint = keys.add_device(args.name, tuple(args.pool))
    return {"added": args.name, "fingerprint": fingerprint, "pools": sorted(set(args.pool))}


def _revoke(keys: KeyDirectory, args: argparse.Namespace) -> dict:
    return {"revoked": keys.revoke(args.device)}


def _show(keys: KeyDirectory, args: argparse.Namespace) -> dict:
    from protocol.transport.identity import pem_fingerprint

    server = pem_fingerprint(keys.server_cert.read_bytes()) if keys.server_cert.is_file() else None
    devices = [{"name": e["name"], "fingerprint": fp, "revoked": e.get("revoked", False), "pools": e.get("pools", [])}
               for fp, e in keys.load_trust().items()]
    return {"directory": str(keys.root), "server_fingerprint": server, "devices": devices}


# The one list of `keys` actions.
ACTIONS = {"init": _init, "add-device": _add, "revoke": _revoke, "show": _show}


def run(args: argparse.Namespace) -> int:
    """Run one keys action and print its JSON result."""
    from protocol.transport.identity import KeyDirectory

    print(json.dumps(ACTIONS[args.action](KeyDirectory(args.dir), args), indent=2))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the subcommand to the CLI."""
    parser = commands.add_parser("keys", help="TLS identities: init, add-device, revoke, show")
    actions = parser.add_subparsers(dest="action", required=True)
    init = actions.add_parser("init", help="create the server identity and device identities")
    init.add_argument("--devices", default="device1", help="comma-separated device names (default: device1)")
    add = actions.add_parser("add-device", help="create one more device identity and trust it")
    add.add_argument("name")
    add.add_argument("--pool", action="append", default=[],
                     help="a pool (of `serve --pool`) the device may join; repeatable (default: none)")
    revoke = actions.add_parser("revoke", help="revoke a device (name or certificate fingerprint)")
    revoke.add_argument("device")
    actions.add_parser("show", help="print the server fingerprint and the device allow-list")
    for sub in (init, add, revoke, actions.choices["show"]):
        sub.add_argument("--dir", required=True, help="key directory")
    parser.set_defaults(handler=run)
