"""`secure-assist serve` as a real child process, for tests and benchmarks.

Started with its own log and ready file, optionally under a descriptor limit or a given
umask (the conditions of the abuse attacks), restartable on the same port, and stopped
by its pid: SIGTERM for a clean stop (timed), SIGKILL for a crash.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import psutil

from protocol.transport.identity import KeyDirectory


class ServeProcess:
    """One `serve` child process over `<root>/server`; logs at `<root>/serve<N>.log` for start N."""

    def __init__(self, root: Path, keys: KeyDirectory, args: Sequence[str] = (), nofile: int | None = None,
                 umask: int | None = None) -> None:
        self.root, self.keys, self.args = Path(root), keys, list(args)
        self.nofile, self.umask = nofile, umask
        self.port, self.starts = 0, 0
        self.process: subprocess.Popen | None = None

    @property
    def workdir(self) -> Path:
        """The server's state directory."""
        return self.root / "server"

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens."""
        return "127.0.0.1", self.port

    def start(self, timeout: float = 120.0) -> "ServeProcess":
        """Start (on the port of the first start, if any) and wait until it listens."""
        self.starts += 1
        ready = self.root / f"ready{self.starts}"
        log = open(self.root / f"serve{self.starts}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "secure_assist.cli", "serve", "--keys", str(self.keys.root), "--workdir",
             str(self.workdir), "--port", str(self.port), "--ready-file", str(ready), *self.args],
            stdout=log, stderr=log, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
            umask=-1 if self.umask is None else self.umask,
            preexec_fn=None if self.nofile is None else self._limit_descriptors)
        log.close()
        if self.port == 0:  # the first start picks the port every restart reuses
            deadline = time.monotonic() + timeout
            while not ready.exists():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"serve did not start:\n{self.log()}")
                time.sleep(0.05)
            self.port = int(ready.read_text().rsplit(":", 1)[1])
        return self

    def _limit_descriptors(self) -> None:
        """Runs in the child before exec: the `prlimit --nofile` of the descriptor-flood attack."""
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process is not None and self.process.poll() is None

    def rss(self) -> int:
        """Resident memory of the server process now, in bytes."""
        return psutil.Process(self.process.pid).memory_info().rss

    def peak_rss(self) -> int:
        """The server process's resident-set high-water mark (VmHWM) so far, in bytes: every peak
        counts, however brief, which sampling the RSS would miss."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc")

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout: float = 60.0) -> float | None:
        """SIGTERM; seconds until it exited, or None if it had not within `timeout` (then it is killed)."""
        if not self.alive():
            return 0.0
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        return time.monotonic() - began

    def log(self, start: int | None = None) -> str:
        """The log of start number `start` (the latest by default)."""
        return (self.root / f"serve{start or self.starts}.log").read_text(errors="replace")

    def __enter__(self) -> "ServeProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.kill()
