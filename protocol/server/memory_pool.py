"""The server-wide memory budget that every device's memory quota draws from.

Each device endpoint reserves the memory it would hold after a request before carrying it out
(`protocol.server.quotas.DeviceQuota`); the pool refuses a reservation that would take all
devices together past the budget, and a closed endpoint gives its share back.
"""

from __future__ import annotations

import threading


class MemoryPool:
    """Bytes reserved per holder, never more than `capacity` in total (thread-safe: device
    endpoints run on threads of their own)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()

    def reserve(self, holder: int, nbytes: int) -> bool:
        """Set `holder`'s reservation to `nbytes` if the total stays within the budget; False if not
        (the reservation is then left as it was)."""
        with self._lock:
            others = sum(self._held.values()) - self._held.get(holder, 0)
            if others + nbytes > self.capacity:
                return False
            self._held[holder] = nbytes
            return True

    def release(self, holder: int) -> None:
        """Give `holder`'s reservation back."""
        with self._lock:
            self._held.pop(holder, None)

    @property
    def reserved(self) -> int:
        """Bytes reserved by every holder together."""
        with self._lock:
            return sum(self._held.values())
