"""The global budget for bytes held in partially received frames.

A frame's payload accumulates in memory until its last byte arrives, so a peer that sends
most of a large frame and stalls holds that memory for the whole read timeout. Before a
payload is read, its declared length is reserved here; nothing is buffered beyond the
header until the reservation succeeds (TCP flow control holds the sender meanwhile).

A frame stays reserved until it is decoded: received frames waiting for a decoding worker are
memory as much as frames still arriving. When a frame does not fit, frames still arriving that
are strictly larger than it are dropped, largest first:
a device sending small requests is never starved by peers holding large half-sent
frames, and a large frame is never dropped to make room for one as large. If that frees
too little, the frame waits for room up to the read timeout, then is refused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass(eq=False)
class PartialFrame:
    """One reservation: a payload of `size` bytes being read by `reader` (set once reading starts)."""

    size: int
    reader: asyncio.Future | None = None
    dropped: str | None = field(default=None)  # why it was dropped to make room, once it was
    # Received in full and being decoded: still counted until released, no longer dropped (nothing
    # would be freed by it: its bytes are in use).
    received: bool = False

    def drop(self, reason: str) -> None:
        """Stop reading this frame; its connection then answers `reason` and closes."""
        self.dropped = reason
        if self.reader is not None:
            self.reader.cancel()


class PartialFrameBudget:
    """Reservations of partially received frames, at most `capacity` bytes in all (event-loop only)."""

    def __init__(self, capacity: int, drop_reason: str) -> None:
        self.capacity = capacity
        self.used = 0
        self._drop_reason = drop_reason
        self._holders: set[PartialFrame] = set()
        self._changed = asyncio.Condition()

    async def reserve(self, frame: PartialFrame, timeout: float) -> bool:
        """Hold `frame.size` bytes, dropping larger frames or waiting up to `timeout`; False if it never fit."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._make_room(frame.size)), timeout)
            except asyncio.TimeoutError:
                return False
            self._holders.add(frame)
            self.used += frame.size
            return True

    def try_reserve(self, frame: PartialFrame) -> bool:
        """Hold `frame.size` bytes now, dropping larger frames if needed; False (nothing held) if it does not fit."""
        if not self._make_room(frame.size):
            return False
        self._holders.add(frame)
        self.used += frame.size
        return True

    async def release(self, frame: PartialFrame) -> None:
        """Give the frame's bytes back (its payload arrived, failed, or was dropped)."""
        async with self._changed:
            if frame in self._holders:
                self._forget(frame)
                self._changed.notify_all()

    def _make_room(self, size: int) -> bool:
        while self.used + size > self.capacity:
            largest = max((held for held in self._holders if not held.received), key=lambda held: held.size,
                          default=None)
            if largest is None or largest.size <= size:
                return False
            self._forget(largest)
            largest.drop(self._drop_reason)
        return True

    def _forget(self, frame: PartialFrame) -> None:
        self._holders.discard(frame)
        self.used -= frame.size
