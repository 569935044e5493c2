"""Crash-safe and private file writes.

Server state (transcripts, caches, checkpoints) holds raw activations and Δ, i.e. the
labels, so it is created private to the server's user, 0700 directories and 0600 files,
whatever the process umask: modes are set explicitly after creation because the umask
only ever removes permission bits (a lax umask would leave them group/world-readable).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never half of it.

    The file is 0600 (mkstemp's mode): it may be server state.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def private_dir(path: Path) -> Path:
    """Make `path` a 0700 directory, creating missing parents 0700 too (existing parents are left alone)."""
    missing = []
    parent = path
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:  # created meanwhile by another thread of this server
            pass
    path.chmod(PRIVATE_DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create `path` if needed, empty, as a 0600 file; an existing file is made 0600, its content kept."""
    os.close(_open_private(path, os.O_WRONLY))
    return path


def open_private_append(path: Path) -> BinaryIO:
    """Open `path` for appending, creating it; the file is 0600."""
    return os.fdopen(_open_private(path, os.O_WRONLY | os.O_APPEND), "ab")


def _open_private(path: Path, flags: int) -> int:
    fd = os.open(path, flags | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
