"""One pool member's server endpoint: its uploads in its own namespace, training and φ from its pool.

It is the single-device PAE server (`SideTuningServer`: the same admission, quotas, cache and
transcript, so its namespace is a server view as today's attacks read it) except that it never
trains: an upload is only cached, and a `TrainUntil` or a `FetchWeights` is answered by the pool.
A member reads nothing of another member: its replies are acknowledgements of its own uploads,
the pool's progress (members ready), the pool's report and the pool's φ.
"""

from __future__ import annotations

import threading
from pathlib import Path

from protocol.errors import ProtocolError
from protocol.files import write_atomic
from protocol.modes.pooled.pool import Pool
from protocol.server.limits import ServerLimits
from protocol.server.side_tuning import SideTuningServer
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import SIDE_NETWORK_FILE
from protocol.wire.messages import FetchWeights, Hello, Message, TrainUntil, Upload, UploadAck

# In the member's namespace: the epochs it asked for once its upload was done (a restarted server
# recovers the pool's members from their namespaces: `protocol.modes.pooled.directory`).
READY_FILE = "pool_ready"


class PoolMemberServer(SideTuningServer):
    """The endpoint of member `member` of `pool` (joined already), its state in `workdir`."""

    def __init__(self, workdir: Path | str, training: ServerTraining, pool: Pool, member: str,
                 limits: ServerLimits | None = None, stop: threading.Event | None = None) -> None:
        super().__init__(workdir, training, limits=limits, stop=stop)
        self.pool, self.member = pool, member
        pool.stored(member, len(self.cache))  # a namespace reopened after a restart

    def admit(self, message: Message) -> None:
        """The single-device checks, and the pool's: one shape for all, its samples, uploads closed once ready."""
        super().admit(message)
        if isinstance(message, Upload):
            self.pool.check_upload(self.member, self._network_shape(message), message.layers,
                                   self.samples_after(message))

    def handle(self, message: Message) -> Message:
        """Uploads are cached; training and weights come from the pool."""
        if isinstance(message, Hello) and message.pool != self.pool.name:
            raise ProtocolError(f"this device's server state is a member of pool {self.pool.name!r}, "
                                f"not {message.pool!r}")
        if isinstance(message, TrainUntil):
            if ready_epochs(self.workdir) is None or message.epochs_total > ready_epochs(self.workdir):
                write_atomic(self.workdir / READY_FILE, str(message.epochs_total).encode())
            return self.pool.train(self.member, message.epochs_total, self.check_stop)
        if isinstance(message, FetchWeights):
            weights, path = self.pool.weights(self.member)
            # The member's view holds the φ it was served, where a single device's view holds its own.
            write_atomic(self.workdir / SIDE_NETWORK_FILE, path.read_bytes())
            return weights
        return super().handle(message)

    def _on_upload(self, upload: Upload) -> UploadAck:
        new, _, _ = self._store(upload)
        self._payload_bytes = self.cache.payload_bytes()
        self.pool.stored(self.member, len(self.cache))
        return UploadAck(stored=int(new.sum()), duplicates=int((~new).sum()))


def ready_epochs(namespace: Path) -> int | None:
    """The epochs a member asked for once its upload was done; None while it is still uploading."""
    path = namespace / READY_FILE
    return int(path.read_text()) if path.is_file() else None
