"""The server side of every mode: a device names its mode first, the host builds it.

`ModeHost` answers one device's wire requests (in process or behind the TLS transport).
The first request of every connection must be `Hello(mode)` (the transport enforces it
per connection, `requires_hello`): a mode the server does
not offer, or another mode than the one this device's server state already holds, is
refused with an error reply and nothing is stored. A `pooled` device may name a pool the
server hosts (`pools`) and the device may join; its namespace is then that pool's member for
good. Once open, the mode's endpoint
answers (and records) every request, Hellos of later connections included, so every
server view says which mode wrote it.

Boosting rounds: a device names round k >= 2 in its Hello (`round`); the host then closes the
endpoint it holds and opens the mode's endpoint for that round, whose state lives in
`round_dir(k)` (default `<workdir>/round<k>`, inside the device's namespace, so the device's disk
quota counts every round it made the server keep). Round 1 is `workdir` itself. A pooled device
names no round: a pool trains once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from protocol.wire.codec import DEFAULT_MAX_BYTES
from protocol.server.endpoint import RecordingEndpoint
from protocol.errors import ProtocolError
from protocol.files import private_dir, write_atomic
from protocol.server.limits import ServerLimits
from protocol.server.quotas import DeviceQuota
from protocol.wire.messages import ErrorReply, Hello, Message, decode_message, encode_message
from protocol.server.training_settings import ServerTraining
from protocol.modes.pooled.directory import POOL_FILE
from protocol.modes.registry import MODES, server_modes

if TYPE_CHECKING:
    from protocol.modes.pooled.directory import PoolDirectory

MODE_FILE = "mode"
log = logging.getLogger(__name__)


class ModeHost:
    """Hosts whichever offered mode the device names; its state lives in `workdir`."""

    # The transport refuses a connection whose first request is not a Hello: a device names its mode on each.
    requires_hello = True

    def __init__(self, workdir: Path | str, offered: tuple[str, ...], training: ServerTraining = ServerTraining(),
                 max_message_bytes: int = DEFAULT_MAX_BYTES, limits: ServerLimits | None = None,
                 stop: threading.Event | None = None, pools: PoolDirectory | None = None,
                 round_dir: Callable[[int], Path] | None = None) -> None:
        unknown = [name for name in offered if name not in MODES]
        if unknown or not offered:
            raise ValueError(f"cannot offer modes {unknown or '(none)'}; known: {list(MODES)}")
        self.workdir = Path(workdir)
        self.offered = tuple(offered)
        self.training = training
        self.max_message_bytes = max_message_bytes
        self.limits = limits
        self.stop = stop
        self.pools = pools
        self.round_dir = round_dir or (lambda number: self.workdir / f"round{number}")
        self.endpoint: RecordingEndpoint | None = None
        self.mode: str | None = None
        self.round = 1  # the boosting round whose endpoint is (or was last) open
        self._endpoint_closed = False

    @property
    def compute_seconds(self) -> float:
        """Seconds the mode's endpoint spent answering requests."""
        return 0.0 if self.endpoint is None else self.endpoint.compute_seconds

    def handle_bytes(self, data: bytes) -> bytes:
        """Answer one encoded request (in process: decoded here)."""
        try:
            message = decode_message(data, self.max_message_bytes)
        except ProtocolError as exc:
            if self.endpoint is None:
                return encode_message(ErrorReply(reason=str(exc)))
            return self.endpoint.handle_bytes(data)  # the mode's endpoint records what it refuses
        return self.handle_message(message, data)

    def handle_message(self, message: Message, data: bytes) -> bytes:
        """Answer one decoded request. Until a mode is open only a Hello is accepted; once it
        is, the mode's endpoint answers everything (a later Hello included) and records it, except
        a Hello naming another boosting round, which opens that round's endpoint first."""
        opening = self.endpoint is None or (isinstance(message, Hello) and message.round != self.round)
        if opening:
            try:
                if not isinstance(message, Hello):
                    raise ProtocolError("the first request must be 'hello' naming the training mode")
                self._open(message.mode, message.pool, message.round)
            except ProtocolError as exc:
                log.warning("refused a device's hello: %s", exc)
                return encode_message(ErrorReply(reason=str(exc)))
        return self.endpoint.handle_message(message, data)

    def _open(self, mode: str, pool: str = "", number: int = 1) -> None:
        if mode not in self.offered:
            raise ProtocolError(f"this server does not offer training mode {mode!r}; it offers {list(self.offered)}")
        held = self.mode or self._recorded(MODE_FILE)
        if held is not None and held != mode:
            raise ProtocolError(f"this device's server state holds training mode {held!r}, not {mode!r}")
        if pool and not MODES[mode].pooled:
            raise ProtocolError(f"training mode {mode!r} takes no pool; name pool {pool!r} with mode 'pooled'")
        if pool and self.pools is None:
            raise ProtocolError(f"this server hosts no pools (asked for {pool!r})")
        if pool and number != 1:
            raise ProtocolError(f"pool {pool!r} trains once: a pooled device names no boosting round")
        held_pool = self._recorded(POOL_FILE) or ""
        if held is not None and held_pool != pool:
            raise ProtocolError(f"this device's server state belongs to pool {held_pool or '(its own)'!r}, "
                                f"not {pool or '(its own)'!r}")
        if pool:
            self.pools.admit(pool, self.workdir)
        private_dir(self.workdir)  # server state is the server user's alone, whatever the umask
        if pool:
            write_atomic(self.workdir / POOL_FILE, pool.encode())
        write_atomic(self.workdir / MODE_FILE, mode.encode())
        self.close()  # the earlier round's endpoint: one round's state is open at a time
        state = self.workdir if number == 1 else private_dir(self.round_dir(number))
        endpoint = (self.pools.member_server(pool, self.workdir, self.training, self.limits, self.stop)
                    if pool else MODES[mode].make_server(state, self.training, self.limits, self.stop))
        if number != 1 and endpoint.quota is not None:  # a round's disk quota is the namespace's, every round in it
            endpoint.quota = DeviceQuota(self.workdir, self.limits)
        endpoint.mode = mode
        endpoint.first_round = self.workdir if number != 1 else None  # the states its refreshed targets pair with
        self.endpoint, self.mode, self.round, self._endpoint_closed = endpoint, mode, number, False

    def _recorded(self, name: str) -> str | None:
        path = self.workdir / name
        return path.read_text().strip() if path.is_file() else None

    def close(self) -> None:
        """Release the mode endpoint's files (once: a later round's Hello may reopen the host)."""
        if self.endpoint is not None and not self._endpoint_closed:
            self.endpoint.close()
            self._endpoint_closed = True


def host_factory(offered: tuple[str, ...] | None = None, pools: PoolDirectory | None = None) -> Callable[..., ModeHost]:
    """The transport server's per-device endpoint factory: a host offering `offered`
    (default: every mode that uploads) and hosting `pools`, under the server's limits and stop flag."""
    modes = offered or server_modes()
    return lambda workdir, training, limits=None, stop=None: ModeHost(workdir, modes, training, limits=limits,
                                                                      stop=stop, pools=pools)
