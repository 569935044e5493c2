"""Open connections, and an accept loop that never stops serving.

`accept_forever` survives every accept error. Out of descriptors (EMFILE/ENFILE) or
buffers, the process cannot accept until something closes, so it sheds the newest
connections that have not authenticated yet (the ones that have invested least, and
where a flood of new connections lands, so authenticated devices and handshakes in
progress keep going), logs, backs off, and tries again. Any other error is logged
and retried with the same back-off. To keep descriptors for the devices' files, the
same shedding starts before the process limit: at `connection_capacity()` open
connections (a quarter of the descriptors, at least 64, stay free).

Among unauthenticated connections, those that have sent nothing for `SILENT_SECONDS`
go first (newest first): a device sends its TLS ClientHello as soon as it connects,
so such a connection only holds a descriptor, and a flood of them must not push out
a device that has just connected and is talking.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("secure_assist.transport")
# Accept errors that mean "out of descriptors or kernel memory": shedding connections helps.
RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
SHED_BATCH = 16
MIN_BACKOFF, MAX_BACKOFF = 0.01, 0.5
SILENT_SECONDS = 1.0
RESERVED_DESCRIPTORS = 64


def connection_capacity() -> int:
    """Open connections allowed under this process's descriptor limit, keeping some for files."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(1, soft - max(RESERVED_DESCRIPTORS, soft // 4))


@dataclass(eq=False)
class Connection:
    """One accepted connection and what the server knows about it so far."""

    peer: str
    sock: socket.socket
    task: asyncio.Task | None = None
    identity: str | None = None  # the device fingerprint, once authenticated
    sent: int = 0  # frames sent back (the next reply's sequence number)
    shed: bool = False  # closed by the server at the descriptor limit
    talking: bool = False  # the peer has sent its first byte
    handling: bool = False  # a request of it is being handled by its device's endpoint
    superseded: bool = False  # closed for a newer connection of the same device
    greeted: bool = False  # its first request has been answered (a Hello, where the endpoint requires one)
    abort: bool = False  # close without flushing: the peer did not read what was sent
    accepted: float = field(default_factory=time.monotonic)


class ConnectionTable:
    """Every open connection, in the order they were accepted."""

    def __init__(self) -> None:
        self._open: dict[Connection, None] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(self, connection: Connection) -> None:
        """Track a newly accepted connection."""
        self._open[connection] = None

    def closed(self, connection: Connection) -> None:
        """Forget a connection whose task ended, and close its socket: a task cancelled before it
        ever ran (shed right after accept) has no code of its own that would."""
        self._open.pop(connection, None)
        connection.sock.close()

    def tasks(self) -> list[asyncio.Task]:
        """The tasks serving the open connections."""
        return [c.task for c in self._open if c.task is not None]

    def shed_newest_unauthenticated(self, count: int) -> int:
        """Close up to `count` of the newest unauthenticated connections, long-silent ones first;
        return how many."""
        now = time.monotonic()
        candidates = [c for c in reversed(self._open) if c.identity is None and not c.shed and c.task]
        silent = [c for c in candidates if not c.talking and now - c.accepted > SILENT_SECONDS]
        victims = (silent + [c for c in candidates if c.talking or now - c.accepted <= SILENT_SECONDS])[:count]
        for victim in victims:
            victim.shed = True
            victim.task.cancel()
        return len(victims)


async def accept_forever(listener: socket.socket, table: ConnectionTable,
                         serve: Callable[[socket.socket, Connection], asyncio.Task], capacity: int) -> None:
    """Accept connections until cancelled; `serve` starts the task that handles one."""
    loop = asyncio.get_running_loop()
    delay = MIN_BACKOFF
    shed_since_log, last_log = 0, 0.0
    while True:
        try:
            sock, address = await loop.sock_accept(listener)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - no accept error may end serving (EMFILE once did)
            shed = 0
            if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRORS:
                shed = table.shed_newest_unauthenticated(SHED_BATCH)
            log.warning("accept failed (%s); %d open connections, shed the %d newest unauthenticated; "
                        "retrying in %.2f s", exc, len(table), shed, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, MAX_BACKOFF)
            continue
        delay = MIN_BACKOFF
        connection = Connection(peer="%s:%s" % address[:2], sock=sock)
        table.add(connection)
        connection.task = serve(sock, connection)
        connection.task.add_done_callback(lambda _, c=connection: table.closed(c))
        if len(table) > capacity:
            shed_since_log += table.shed_newest_unauthenticated(1)  # usually the one just accepted
            if time.monotonic() - last_log > 1.0:  # a flood must not flood the log too
                log.warning("at the connection capacity (%d, from the descriptor limit): shed the %d newest "
                            "unauthenticated connections since the last report", capacity, shed_since_log)
                shed_since_log, last_log = 0, time.monotonic()
