"""Measure a phase's wall time and peak resident memory (RSS) of this process."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import psutil


class PeakMemory:
    """Context manager sampling this process's RSS every few milliseconds.

    ru_maxrss only knows the lifetime peak; a sampler gives the peak of one phase.
    """

    def __init__(self, interval_seconds: float = 0.005) -> None:
        self._interval = interval_seconds
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.peak_bytes = 0
        self.seconds = 0.0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> "PeakMemory":
        self.peak_bytes = self._process.memory_info().rss
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
        self.seconds = time.perf_counter() - self._start

    @property
    def peak_mib(self) -> float:
        """Peak RSS in MiB."""
        return self.peak_bytes / 2**20
