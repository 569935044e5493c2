"""A bound on TLS handshakes in progress, all peers together.

A handshake holds TLS state (asyncio's SSL protocol allocates a 256 KiB buffer per
connection, OpenSSL its own session state) from the peer's first byte until it
completes or times out, so stalled handshakes are memory an unauthenticated peer
can make the server hold. At most `capacity` hold that state at once. When a new one
arrives and all turns are taken, the oldest handshake in progress is shed: an honest
handshake completes in milliseconds, so the oldest is the one most likely stalled,
and a flood of stalled handshakes never makes a device wait long for a turn.

A shed handshake keeps its turn until its task has unwound and dropped its TLS state,
and the newcomer waits for that turn: shedding is a cancellation, which takes effect
only when the shed task next runs, so a burst of connections arriving together would
otherwise each build TLS state before any shed one had released its own.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

from protocol.transport.connections import Connection


class HandshakeGate:
    """Turns for TLS handshakes (event-loop only); counts those holding a turn, the most that ever
    did, and those shed for a newer one."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.peak = 0
        self.shed = 0
        self._running: dict[Connection, None] = {}  # oldest first; shed ones until they have unwound
        self._waiting: list[asyncio.Future] = []  # newcomers waiting for a turn to free

    @property
    def running(self) -> int:
        """Handshakes holding a turn now."""
        return len(self._running)

    @asynccontextmanager
    async def turn(self, connection: Connection, timeout: float) -> AsyncIterator[None]:
        """Hold a turn for `connection`'s handshake, shedding the oldest one in progress if all are
        taken and waiting (at most `timeout`: asyncio.TimeoutError) until the shed one has let go."""
        async with asyncio.timeout(timeout):  # in this task: no other newcomer runs between the check and the turn
            while not self._room():
                freed = asyncio.get_running_loop().create_future()
                self._waiting.append(freed)
                await freed
        self._running[connection] = None
        self.peak = max(self.peak, len(self._running))
        try:
            yield
        finally:
            del self._running[connection]
            # Synchronous, so a task cancelled again while unwinding still wakes the newcomers.
            waiting, self._waiting = self._waiting, []
            for freed in waiting:
                if not freed.done():
                    freed.set_result(None)

    def _room(self) -> bool:
        """Whether a turn is free; if not, shed the oldest handshake not shed yet (its turn frees once it unwinds)."""
        if len(self._running) < self.capacity:
            return True
        oldest = next((held for held in self._running if not held.shed), None)
        if oldest is not None:
            oldest.shed = True
            if oldest.task is not None:
                oldest.task.cancel()
            self.shed += 1
        return False
