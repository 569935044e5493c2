"""`secure-assist serve`: the server role of every uploading training mode, for many devices
over TLS 1.3 (each device names its mode in its first request)."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import sys
from pathlib import Path

from protocol.errors import UserInputError
from protocol.files import write_atomic
from protocol.server.limits import ServerLimits
from protocol.server.training_settings import ServerTraining


_M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)


def _return_large_buffers_to_the_os() -> None:
    """Pin glibc's mmap threshold at 1 MiB. By default it rises after large blocks are freed, after
    which frame buffers come from the heap and stay resident when freed: every malformed or dropped
    frame would raise the server's memory for good (`benchmarks/transport_abuse.py` reports the
    server's peak RSS under malformed frames; BENCHMARKS.md, "Secure transport")."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its allocator has no such threshold to pin
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; then end the process (it does not return after serving)."""
    from protocol.transport.identity import KeyDirectory
    from protocol.transport.server import DEVICES_DIR, TransportServer
    from protocol.modes.registry import get_mode, server_modes
    from protocol.modes.host import host_factory
    from protocol.modes.pooled.directory import PoolDirectory, parse_pool
    from protocol.transport.allow_list import KeyPoolAdmission

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = ServerLimits.from_arguments(args)
    _return_large_buffers_to_the_os()
    training = ServerTraining(rank=args.rank, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                              adapter_lr_scale=args.adapter_lr_scale, cosine_decay=args.cosine_decay,
                              batch_size=args.server_batch_size, seed=args.seed)
    offered = args.modes or server_modes()
    refused = [name for name in offered if not get_mode(name).uploads]
    if refused:
        raise UserInputError(f"{', '.join(refused)} upload nothing and cannot be served; offer {list(server_modes())}")
    keys = KeyDirectory(Path(args.keys))
    pools = dict(parse_pool(text) for text in args.pool)
    if len(pools) != len(args.pool):
        raise UserInputError("a pool is named twice in --pool")
    if pools and "pooled" not in offered:
        raise UserInputError("--pool hosts pools of the mode 'pooled': offer it in --modes")
    directory = (PoolDirectory(Path(args.workdir), Path(args.workdir) / DEVICES_DIR, pools, training, limits,
                               KeyPoolAdmission(keys)) if pools else None)
    server = TransportServer(Path(args.workdir), keys, training, limits,
                             endpoint_factory=host_factory(offered, directory))

    def ready(host: str, port: int) -> None:
        if args.ready_file:
            write_atomic(Path(args.ready_file), f"{host}:{port}\n".encode())

    asyncio.run(server.serve_until_signal(args.host, args.port, ready))
    # Every device's files are closed and every thread joined by now. Skip the interpreter's
    # teardown of torch and the CLI's other imports: it took 2-11 s on a loaded 2-core host,
    # and a SIGTERM must stop the server within seconds.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the subcommand to the CLI."""
    parser = commands.add_parser("serve", help="run the server role for many devices (TLS 1.3, mutual auth)")
    parser.add_argument("--keys", required=True, help="key directory with server.key/.crt and trusted_devices.json")
    parser.add_argument("--workdir", required=True, help="root of the per-device work directories")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8443, help="TCP port; 0 picks a free one (default: 8443)")
    parser.add_argument("--ready-file", help="write host:port here once listening")
    parser.add_argument("--modes", type=lambda text: tuple(p for p in text.split(",") if p), default=None,
                        help="comma-separated training modes to offer (default: every mode that uploads)")
    parser.add_argument("--pool", action="append", default=[], metavar="NAME:QUORUM",
                        help="host a pool (mode pooled): one side network trained once QUORUM member devices have "
                             "uploaded; the key directory says who may join (repeatable; default: none)")
    parser.add_argument("--rank", type=int, default=ServerTraining.rank,
                        help=f"side-network rank (default: {ServerTraining.rank})")
    parser.add_argument("--learning-rate", type=float, default=ServerTraining.learning_rate,
                        help=f"AdamW learning rate (default: {ServerTraining.learning_rate})")
    parser.add_argument("--weight-decay", type=float, default=ServerTraining.weight_decay,
                        help=f"AdamW decoupled weight decay (default: {ServerTraining.weight_decay})")
    parser.add_argument("--adapter-lr-scale", type=float, default=ServerTraining.adapter_lr_scale,
                        help=f"adapters' learning rate as a multiple of --learning-rate "
                             f"(default: {ServerTraining.adapter_lr_scale})")
    parser.add_argument("--cosine-decay", action=argparse.BooleanOptionalAction, default=ServerTraining.cosine_decay,
                        help="decay the learning rate to zero over the cached epochs (default: on)")
    parser.add_argument("--server-batch-size", type=int, default=ServerTraining.batch_size,
                        help=f"cached-epoch batch size (default: {ServerTraining.batch_size})")
    parser.add_argument("--seed", type=int, default=ServerTraining.seed,
                        help=f"side-network seed (default: {ServerTraining.seed})")
    ServerLimits.add_arguments(parser)
    parser.set_defaults(handler=run)
