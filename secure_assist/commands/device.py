"""`secure-assist device`: the device side of fine-tuning against a `secure-assist serve` server.

Every training mode that uploads runs this way (`side_network`, `ckks_ridge` with
`--mechanism he_ckks`, `generation` with `--task generation`); the device names its mode first. Prediction stays local
afterwards: `secure-assist predict <workdir>/model.safetensors`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from protocol.errors import UserInputError
from secure_assist.commands.finetune import add_config_flags, config_from_args


def parse_address(text: str) -> tuple[str, int]:
    """host:port -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserInputError(f"server address {text!r} must be host:port")
    return host.strip("[]"), int(port)


def run(args: argparse.Namespace) -> int:
    """Fine-tune against the server and print the JSON summary."""
    from protocol.transport.client import NetworkChannel
    from protocol.transport.identity import KeyDirectory
    from secure_assist.task_kinds import task_kind
    from secure_assist.training.run import resolve_mode
    from secure_assist.training.run import build_mechanisms, run_training

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = parse_address(args.server)
    config = config_from_args(args)
    mode = resolve_mode(config.mode, config.mechanism, task_kind(config).name)
    build_mechanisms(config, mode)  # configuration errors fail before connecting
    if not mode.uploads:
        raise UserInputError(f"training mode {mode.name!r} uploads nothing: run it with `secure-assist finetune`")
    keys = KeyDirectory(Path(args.keys))
    context, pinned = keys.device_context(args.name, Path(args.server_cert) if args.server_cert else None)
    channel = NetworkChannel(host, port, context, pinned, timeout=args.request_timeout,
                             reconnect_seconds=args.reconnect_seconds)
    try:
        summary = run_training(config, channel, progress=not args.quiet, overwrite=args.overwrite)
    finally:
        channel.close()
    print(json.dumps(summary.to_json(), indent=2))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the subcommand to the CLI."""
    parser = commands.add_parser("device", help="fine-tune as a device against a `serve` server")
    parser.add_argument("--server", required=True, help="server address host:port")
    parser.add_argument("--keys", required=True, help="key directory holding devices/<name>.key/.crt")
    parser.add_argument("--name", required=True, help="this device's identity name")
    parser.add_argument("--server-cert", help="pinned server certificate (default: <keys>/server.crt)")
    parser.add_argument("--reconnect-seconds", type=float, default=120.0,
                        help="how long to keep retrying a broken link (default: 120)")
    parser.add_argument("--request-timeout", type=float, default=600.0,
                        help="seconds to wait for one reply (the server answers a training request within its "
                             "--train-reply-seconds, 60 by default, plus the epoch in progress; default: 600)")
    add_config_flags(parser)
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming --workdir")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)
