"""A bound on TLS handshakes in progress, all peers together.

A handshake holds TLS state (asyncio's SSL protocol allocates a 256 KiB buffer per
connection, OpenSSL its own session state) from the peer's first byte until it
completes or times out, so stalled handshakes are memory an unauthenticated peer
can make the server hold. At most `capacity` run at once; the others wait for a
turn, in arrival order, within the same handshake deadline, holding only a descriptor.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator


class HandshakeGate:
    """Turns for TLS handshakes (event-loop only); tracks how many run, and the most that ever did."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.running = 0
        self.peak = 0
        self._turns = asyncio.Semaphore(capacity)

    @asynccontextmanager
    async def turn(self, deadline: float) -> AsyncIterator[float | None]:
        """Hold a turn; yields the seconds left before `deadline` (time.monotonic), or None if no turn
        came in time."""
        try:
            await asyncio.wait_for(self._turns.acquire(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            yield None
            return
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            yield max(0.001, deadline - time.monotonic())
        finally:
            self.running -= 1
            self._turns.release()
