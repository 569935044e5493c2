"""Log lines a peer can trigger, at most one per source per interval.

A peer that sends garbage, fails handshakes or is refused in a loop would otherwise
write one line per attempt: the log becomes its disk and CPU amplifier. Each source
gets its first line of an interval written; later lines of that interval are counted,
and one summary line says how many were held back once the interval is over. A
source is a peer's address until it authenticates; an allow-listed device's lines are
limited per kind of line (its text without numbers), so each different refusal it
meets is still logged once. The table of sources is bounded: when it is full, new
sources share one entry.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

MAX_SOURCES = 1024
OTHER_SOURCES = "other sources"


@dataclass
class _Interval:
    started: float
    held_back: int = 0


class PeerLog:
    """Rate-limited lines of `logger`, keyed by the source that triggered them (event-loop only)."""

    def __init__(self, logger: logging.Logger, interval_seconds: float, max_sources: int = MAX_SOURCES) -> None:
        self.logger = logger
        self.interval = interval_seconds
        self.max_sources = max_sources
        self.written = 0
        self.held_back = 0
        self._sources: dict[str, _Interval] = {}

    def line(self, level: int, source: str, message: str, *args: object) -> None:
        """Write `message % args` unless `source` already had a line this interval (then count it)."""
        now = time.monotonic()
        self.flush(now)
        if source not in self._sources and len(self._sources) >= self.max_sources:
            source = OTHER_SOURCES
        entry = self._sources.get(source)
        if entry is not None:
            entry.held_back += 1
            self.held_back += 1
            return
        self._sources[source] = _Interval(now)
        self.written += 1
        self.logger.log(level, message, *args)

    def flush(self, now: float | None = None) -> None:
        """Close the intervals that are over: one summary line for each that held lines back."""
        now = time.monotonic() if now is None else now
        for source, entry in [(s, e) for s, e in self._sources.items() if now - e.started >= self.interval]:
            del self._sources[source]
            if entry.held_back:
                self.written += 1
                self.logger.warning("%s: %d more lines like the last one held back in %.0f s (rate limit)",
                                    source, entry.held_back, now - entry.started)


def peer_source(peer: str, identity: str | None, line: str) -> str:
    """The rate-limited source of a connection's `line`: its address without the port before it
    authenticates; once it has, its device identity and the kind of line."""
    if identity is None:
        return peer.rsplit(":", 1)[0]
    return f"device {identity[:16]} ({re.sub(r'[0-9]+', '#', line)[:80]})"
