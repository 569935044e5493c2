"""Per-device byte quotas: the disk a device's state may use and the memory the server holds for it.

Limits on samples, shapes and frames do not bound bytes, so each request is also admitted only if,
once carried out, (1) the device's work directory (cache, transcript, checkpoints: all of it) stays
within `--max-device-disk-mib`, and (2) the memory the server holds for the device stays within
`--max-device-memory-mib` and, with every other device's, within `--max-server-memory-mib`
(`protocol.server.memory_pool.MemoryPool`). Both are predicted before the request runs, from
the directory's measured size plus what the request can add, so a misprediction never accumulates:
the next request starts from the real size again.

What a request can add to the disk: its transcript record, the role's stored copy of it and the
cache journal's copy (`REQUEST_COPIES` times its wire size), a reply of no declared size
(`REPLY_ALLOWANCE`), and what the role declares (a new side network's checkpoints, a new weights
reply). What a device holds in memory is declared by its role (side network, optimizer state,
weights reply, and its cached samples, which a cached epoch loads whole).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from protocol.server.limits import MIB, ServerLimits

if TYPE_CHECKING:  # the quota arithmetic needs no torch
    from protocol.model.side_network import SideNetworkShape

REQUEST_COPIES = 3
REPLY_ALLOWANCE = 64 * 1024
# Safetensors header of a weights message or checkpoint: tensor names, dtypes, shapes, metadata.
WEIGHTS_HEADER_BYTES = 16 * 1024
# A side network in training: weights, gradients, AdamW's two moments; the served copy, the
# cached weights reply and its encoding (each one weights' worth).
NETWORK_MEMORY_COPIES = 7
# A side network on disk: the training state (weights, two moments) and φ, plus a new training
# state written beside the old one before it replaces it.
CHECKPOINT_DISK_COPIES = 7
# A cached epoch reads every cached row (the database's bytes) and stacks them into arrays.
CACHED_EPOCH_COPIES = 2


def directory_bytes(path: Path) -> int:
    """Bytes of every file under `path` (0 if it does not exist yet)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # an atomic write's temporary file, renamed meanwhile
                pass
    return total


def weights_bytes(shape: "SideNetworkShape") -> int:
    """Bytes of a side network's weights as served and saved (float32 parameters and input
    standardization, and the header): also the size of its `SideWeights` reply."""
    n, d, r, c = shape.n_layers, shape.hidden_size, shape.rank, shape.n_classes
    values = n + 2 * n * d * r + c * d + c + 2 * n * d
    return 4 * values + WEIGHTS_HEADER_BYTES


class DeviceQuota:
    """One device's disk and memory quotas, its memory drawn from the limits' server-wide pool."""

    def __init__(self, workdir: Path, limits: ServerLimits) -> None:
        self.workdir = workdir
        self.limits = limits
        self._holder = id(self)

    def check_disk(self, growth: int, what: str) -> None:
        """Raise LimitExceeded unless the directory can grow by `growth` bytes within the quota."""
        after = directory_bytes(self.workdir) + growth
        if after > self.limits.max_device_disk_mib * MIB:
            raise self.limits.exceeded("max_device_disk_mib", f"{what}: {after} bytes on disk for this device")

    def check_memory(self, held: int, what: str) -> None:
        """Reserve `held` bytes for the device (its whole holding after the request), or raise
        LimitExceeded naming the per-device or the server-wide quota; a refusal keeps the old reservation."""
        if held > self.limits.max_device_memory_mib * MIB:
            raise self.limits.exceeded("max_device_memory_mib", f"{what}: {held} bytes held for this device")
        if not self.limits.memory_pool.reserve(self._holder, held):
            raise self.limits.exceeded("max_server_memory_mib",
                                       f"{what}: {held} bytes for this device beside "
                                       f"{self.limits.memory_pool.reserved} held for all devices")

    def release(self) -> None:
        """Give the device's memory back to the server-wide pool."""
        self.limits.memory_pool.release(self._holder)
