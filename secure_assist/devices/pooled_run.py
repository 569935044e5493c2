"""Pooled PAE for several devices in process: every device uploads into its own namespace of one
pool, then the server trains one side network on the union and every device deploys it.

Each device is a normal run (`secure_assist.training.run`: `start_run`, `train_side`, `deploy`)
with its own data share, mechanisms, hold-out split and safeguard; only the server is shared. Its
summary's `server_view` is its own namespace (`<pool_dir>/devices/device-<index>`: its cache and
transcript, the layout every attack reads), and the pool's φ is
`<pool_dir>/pools/pool/trained/side_network.safetensors`.
`run_members` is the same coordination over any channels (the TLS test runs it against `serve`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from protocol.errors import UserInputError
from protocol.modes.host import ModeHost
from protocol.modes.pooled.directory import POOLS_DIR, PoolDirectory
from protocol.modes.pooled.mode import PooledMode
from protocol.modes.pooled.pool import TRAINED_DIR
from protocol.server.transcript import SIDE_NETWORK_FILE
from protocol.modes.registry import MODES
from protocol.wire.channel import Channel, InProcessChannel
from secure_assist.config import FinetuneConfig
from secure_assist.training.run import build_mechanisms, deploy, start_run, train_side
from secure_assist.training.summary import RunSummary
from secure_assist.training.workdir import prepare_workdir

POOL = "pool"  # the in-process pool's name
DEVICES_DIR = "devices"


@dataclass
class PoolOutcome:
    """Every device's run summary (in `configs` order), where the pool's server kept its state,
    the server's compute seconds (uploads and the pool's training) and pool-level numbers."""

    summaries: list[RunSummary]
    pool_dir: Path
    server_seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def member_name(config: FinetuneConfig) -> str:
    """A device's member name (its namespace, and its place in the pool's sample order)."""
    return f"device-{config.device_index}"


def pooled_configs(configs: list[FinetuneConfig], pool: str = POOL) -> list[FinetuneConfig]:
    """The devices' configs as members of `pool`; one-line errors for a list that cannot pool."""
    if not configs:
        raise UserInputError("a pool needs at least one device")
    indices = [c.device_index for c in configs]
    if len(set(indices)) != len(indices) or len({c.workdir for c in configs}) != len(configs):
        raise UserInputError("every device of a pool needs its own device_index and workdir")
    configs = [replace(c, mode=PooledMode.name, pool=pool) for c in configs]
    for config in configs:
        build_mechanisms(config)  # e.g. he_ckks is refused here, before any device works
    return configs


def run_members(configs: list[FinetuneConfig], channels: list[Channel], progress: bool = True) -> list[RunSummary]:
    """Every device's upload, then every device's word that it is done (the last completes the
    quorum and the pool trains), then every device's fetch and deployment."""
    mode = MODES[PooledMode.name]
    runs = []
    try:
        for config, channel in zip(configs, channels):
            runs.append(start_run(config, channel, progress))
        for run in runs:
            mode.request_training(run.channel, run.config.epochs)
        outcomes = [train_side(run) for run in runs]
    finally:
        for run in runs:
            run.close()
    return [deploy(run, outcome) for run, outcome in zip(runs, outcomes)]


def run_pooled(configs: list[FinetuneConfig], progress: bool = True, pool_dir: Path | None = None,
               overwrite: bool = False) -> PoolOutcome:
    """Pooled PAE of the devices `configs` (same everything but device_index, flip_labels, workdir and
    mechanism seeds), in process; the pool's quorum is every device. `pool_dir`: the server's
    directory (default: `pool_server` next to the first device's workdir)."""
    configs = pooled_configs(configs)
    pool_dir = Path(pool_dir) if pool_dir is not None else Path(configs[0].workdir).parent / "pool_server"
    for path in [pool_dir] + [Path(c.workdir) for c in configs]:
        prepare_workdir(path, overwrite)
    training = configs[0].server_training()
    directory = PoolDirectory(pool_dir, pool_dir / DEVICES_DIR, {POOL: len(configs)}, training)
    hosts = [ModeHost(pool_dir / DEVICES_DIR / member_name(c), (PooledMode.name,), training, pools=directory)
             for c in configs]
    try:
        summaries = run_members(configs, [InProcessChannel(host) for host in hosts], progress)
    finally:
        for host in hosts:
            host.close()
    summaries = [replace(summary, server_view=str(host.workdir), server_seconds=host.compute_seconds)
                 for summary, host in zip(summaries, hosts)]
    return PoolOutcome(summaries=summaries, pool_dir=pool_dir,
                       server_seconds=sum(host.compute_seconds for host in hosts),
                       details={"pool": POOL, "members": len(configs), "quorum": len(configs),
                                "pool_samples": summaries[0].cache_samples,
                                "side_network": str(pool_dir / POOLS_DIR / POOL / TRAINED_DIR / SIDE_NETWORK_FILE)})
