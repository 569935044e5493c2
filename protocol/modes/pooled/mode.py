"""`pooled`: Pooled PAE. Every device uploads as in `side_network`, into its own namespace and
through its own mechanisms; the server trains one side network on the union of its pool's caches
(`protocol.modes.pooled.pool`) and every member fetches that φ and deploys it behind its own safeguard.

A device names its pool in its Hello (`--pool`); one that names none is a pool of one. Its
`TrainUntil` says it has finished its upload; until the pool's quorum has, the server answers
`PoolPending` and the device asks again, for as long as the server's answer allows.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from protocol.errors import ProtocolError
from protocol.modes.pooled.messages import PoolPending
from protocol.modes.side_network.mode import SideNetworkMode
from protocol.server.endpoint import RecordingEndpoint
from protocol.server.limits import ServerLimits
from protocol.server.training_settings import ServerTraining
from protocol.wire.channel import Channel
from protocol.wire.messages import Message, TrainReport, TrainUntil, expect

# A device polls at least this often and at most this long beyond the wait the server announced
# (a server that keeps answering 'pending' cannot hold a device for ever).
MIN_POLL_SECONDS, MAX_POLL_SECONDS, WAIT_SLACK_SECONDS = 0.05, 5.0, 30.0
MAX_DEVICE_WAIT_SECONDS = 3600.0
log = logging.getLogger(__name__)
_PER_DEVICE_SECRET = "its restore needs this device's own secret, which a φ shared by the pool cannot serve"


class PooledMode(SideNetworkMode):
    """One side network for a pool of devices; each device uploads and deploys as in PAE."""

    name = "pooled"
    description = "Pooled PAE: the server trains one side network on the union of a pool's uploads"
    messages = SideNetworkMode.messages + (PoolPending,)
    pooled = True
    refused_mechanisms = {
        "he_ckks": "ciphertexts under different device keys cannot be pooled (it would need multi-key CKKS)",
        "activation_rotation": _PER_DEVICE_SECRET,
        "rotation_mask": _PER_DEVICE_SECRET,
    }

    def make_server(self, workdir: Path, training: ServerTraining, limits: ServerLimits | None = None,
                    stop: threading.Event | None = None) -> RecordingEndpoint:
        """A device that names no pool: a pool of one (a named pool's endpoint comes from the server's pools)."""
        from protocol.modes.pooled.directory import private_member_server  # torch: see protocol.modes.base

        return private_member_server(workdir, training, limits, stop)

    def training_report(self, channel: Channel, epochs: int) -> TrainReport:
        """Ask for training until the pool has trained, waiting while its quorum is not in."""
        deadline = None
        while True:
            reply = self.request_training(channel, epochs)
            if isinstance(reply, TrainReport):
                return reply
            now = time.monotonic()
            if deadline is None:
                deadline = now + min(reply.wait_left_seconds + WAIT_SLACK_SECONDS, MAX_DEVICE_WAIT_SECONDS)
                log.info("waiting for the pool's quorum: %d of %d members have finished their upload", reply.ready,
                         reply.quorum)
            if now >= deadline:
                raise ProtocolError(f"the pool's quorum was not reached in time: {reply.ready} of {reply.quorum} "
                                    f"members had finished their upload")
            time.sleep(min(max(reply.retry_seconds, MIN_POLL_SECONDS), MAX_POLL_SECONDS, deadline - now))

    def request_training(self, channel: Channel, epochs: int) -> TrainReport | PoolPending:
        """Say the upload is finished and ask for `epochs` epochs: the pool's report, or 'pending'."""
        reply: Message = channel.request(TrainUntil(epochs_total=epochs))
        return reply if isinstance(reply, PoolPending) else expect(reply, TrainReport)
