"""Wire message of the pooled mode, listed in `protocol.wire.messages.MESSAGE_TYPES`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from protocol.errors import ProtocolError
from protocol.wire.message_base import Message, _exact_keys, _int_field


@dataclass(frozen=True)
class PoolPending(Message):
    """Reply to a pool member's `TrainUntil` while its pool's quorum has not finished epoch 1:
    ask again after `retry_seconds`; the server gives up on the member after `wait_left_seconds`."""

    TYPE: ClassVar[str] = "pool_pending"
    ready: int  # members that have finished their upload
    quorum: int  # members the pool trains with
    retry_seconds: float
    wait_left_seconds: float

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {}, {"ready": self.ready, "quorum": self.quorum, "retry_seconds": self.retry_seconds,
                    "wait_left_seconds": self.wait_left_seconds}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "PoolPending":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"ready", "quorum", "retry_seconds", "wait_left_seconds"})
        seconds = [meta["retry_seconds"], meta["wait_left_seconds"]]
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and np.isfinite(s) and s >= 0
                   for s in seconds):
            raise ProtocolError("pool_pending: the seconds must be finite numbers >= 0")
        return cls(ready=_int_field(meta, "ready"), quorum=_int_field(meta, "quorum", low=1),
                   retry_seconds=float(seconds[0]), wait_left_seconds=float(seconds[1]))
