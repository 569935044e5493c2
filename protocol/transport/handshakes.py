"""A bound on TLS handshakes in progress, all peers together.

A handshake holds TLS state (asyncio's SSL protocol allocates a 256 KiB buffer per
connection, OpenSSL its own session state) from the peer's first byte until it
completes or times out, so stalled handshakes are memory an unauthenticated peer
can make the server hold. At most `capacity` run at once. When a new one arrives
and all turns are taken, the oldest handshake in progress is shed: an honest
handshake completes in milliseconds, so the oldest is the one most likely stalled,
and a flood of stalled handshakes never makes a device wait for a turn.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from protocol.transport.connections import Connection


class HandshakeGate:
    """Turns for TLS handshakes (event-loop only); counts those running, the most that ever
    did, and those shed for a newer one."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.peak = 0
        self.shed = 0
        self._running: dict[Connection, None] = {}  # oldest first

    @property
    def running(self) -> int:
        """Handshakes in progress now."""
        return len(self._running)

    @contextmanager
    def turn(self, connection: Connection) -> Iterator[None]:
        """Hold a turn for `connection`'s handshake, shedding the oldest one in progress if all are taken."""
        if len(self._running) >= self.capacity:
            oldest = next(iter(self._running))
            del self._running[oldest]
            oldest.shed = True
            if oldest.task is not None:
                oldest.task.cancel()
            self.shed += 1
        self._running[connection] = None
        self.peak = max(self.peak, len(self._running))
        try:
            yield
        finally:
            self._running.pop(connection, None)
