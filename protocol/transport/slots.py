"""One device's server role while it is connected, and its release once it is not.

A slot holds what serving one device costs: its endpoint (open files, the side network,
cached state), the single thread that alone touches it, and its open connections. When
the device has had no connection for a while the slot is released: the endpoint closes
its files and frees its memory, the thread ends. The endpoint's state is on disk, so the device's
next connection reopens it as it was. A slot also carries the device's stop signal:
revoking the device stops its work in flight at the next training step.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from protocol.server.limits import ServerLimits
from protocol.server.training_settings import ServerTraining
from protocol.transport.connections import Connection
from protocol.wire.messages import Message


class DeviceEndpoint(Protocol):
    """One device's server role: answers decoded requests, releases its files on close."""

    # True when every connection must open with a Hello naming the training mode.
    requires_hello: bool

    def handle_message(self, message: Message, data: bytes) -> bytes:
        """Answer one request already decoded from `data` (its wire form)."""

    def close(self) -> None:
        """Release files."""


def side_tuning_endpoint(workdir: Path, training: ServerTraining, limits: ServerLimits | None = None,
                         stop: threading.Event | None = None) -> DeviceEndpoint:
    """The bare side-network server (no modes): the transport's default endpoint, for its tests and benchmarks."""
    # Imported on first use: it loads torch, and `serve` listens before paying for that.
    from protocol.server.side_tuning import SideTuningServer

    return SideTuningServer(workdir, training, limits=limits, stop=stop)


class DeviceStop(threading.Event):
    """Set when this device's work in flight must stop: the device was revoked, or the server stops.

    Endpoints check `is_set()` between training steps, as they do the server's own stop flag."""

    def __init__(self, server_stop: threading.Event) -> None:
        super().__init__()
        self._server_stop = server_stop

    def is_set(self) -> bool:
        """True once the device was stopped or the server is stopping."""
        return super().is_set() or self._server_stop.is_set()

    @property
    def revoked(self) -> bool:
        """True when this device itself was stopped (not the whole server)."""
        return super().is_set()


@dataclass
class DeviceSlot:
    """One device's server role and the thread that alone touches it."""

    identity: str
    stop: DeviceStop
    executor: ThreadPoolExecutor = field(init=False)
    endpoint: DeviceEndpoint | None = None
    open: list[Connection] = field(default_factory=list)  # oldest first
    idle_since: float = 0.0  # time.monotonic() when its last connection ended

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"device-{self.identity[:8]}")

    def release(self) -> None:
        """Close the endpoint (in the device's thread, after any request still running there)."""
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
