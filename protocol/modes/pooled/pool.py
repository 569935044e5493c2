"""A named pool: the members of one shared side network, and its training.

Each member's endpoint (`protocol.modes.pooled.member.PoolMemberServer`) keeps its uploads in
its own namespace (cache, transcript); the pool learns of a member only its name, its namespace,
how many samples it holds and whether it has finished its upload (its first `TrainUntil`). Once
`quorum` members have, the pool trains one side network with the single-device `SideTrainer` on
the union of their caches, read in a fixed order: by member name, then in each member's upload
order (sample ids are random per run; the order a device uploads its samples in is not). Epoch 1
is one pass over that union in order, as single-device PAE's epoch 1 is one pass over uploads as
they arrive; the cached epochs follow. So the weights depend on which members are in, never on
the order they arrived in. Each distinct set of members (one more member ready, one revoked) is
trained from scratch: a revoked member's samples leave every later training, it no longer counts for
the quorum, and the φ trained with it is no longer served (below the quorum, members wait).
Thread-safe: members are served from their own threads, and one trains for all under the lock.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from protocol.errors import ProtocolError
from protocol.files import private_dir, write_atomic
from protocol.model.side_network import AdditiveSideNetwork, SideNetworkShape, state_arrays
from protocol.modes.pooled.messages import PoolPending
from protocol.server.cache import ActivationCache
from protocol.server.limits import ServerLimits
from protocol.server.trainer import SideTrainer
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import CACHE_FILE, SIDE_NETWORK_FILE
from protocol.wire.messages import SideWeights, TrainReport

# How often a waiting member is asked to try again.
RETRY_SECONDS = 0.5
# In the pool's directory: the upload shape every member must share (kept across restarts), and the
# trainer's files of the latest training (φ: `trained/side_network.safetensors`).
SHAPE_FILE, TRAINED_DIR = "shape.json", "trained"


@dataclass
class Member:
    """What the pool knows of one member."""

    identity: str  # its namespace's name (the certificate fingerprint over the network)
    namespace: Path
    samples: int = 0
    epochs: int | None = None  # the epochs it asked for once its upload was done; None: still uploading
    ready_since: float = 0.0


@dataclass(frozen=True)
class Trained:
    """The pool's side network for one set of members."""

    members: tuple[str, ...]
    epochs: int
    report: TrainReport
    weights: SideWeights


class Pool:
    """One shared side network; `active(identity)` says whether a member may still be trained on
    (False once it is revoked)."""

    def __init__(self, name: str, quorum: int, root: Path, training: ServerTraining,
                 limits: ServerLimits | None = None, active: Callable[[str], bool] = lambda identity: True) -> None:
        self.name, self.quorum, self.root = name, quorum, Path(root)
        self.training, self.limits, self.active = training, limits, active
        self.wait_seconds = limits.pool_wait_seconds if limits is not None else ServerLimits.pool_wait_seconds
        self._members: dict[str, Member] = {}
        self._shape: tuple[SideNetworkShape, tuple[int, ...]] | None = None
        if (self.root / SHAPE_FILE).is_file():
            saved = json.loads((self.root / SHAPE_FILE).read_text())
            self._shape = SideNetworkShape(**saved["shape"]), tuple(saved["layers"])
        self._trained: Trained | None = None
        self._lock = threading.Lock()

    def join(self, member: str, identity: str, namespace: Path, samples: int = 0, epochs: int | None = None) -> None:
        """Admit a member (again, after a reconnect: its namespace is unchanged); a server restarting
        recovers its members with the samples they hold and the epochs they asked for once done."""
        with self._lock:
            if member in self._members:
                if self._members[member].identity != identity:
                    raise ProtocolError(f"pool {self.name!r} already has another member named {member!r}")
                return
            if self.limits is not None and len(self._members) >= self.limits.max_pool_members:
                raise self.limits.exceeded("max_pool_members", f"member {len(self._members) + 1} of pool {self.name!r}")
            self._members[member] = Member(identity, Path(namespace), samples, epochs, time.monotonic())

    def check_upload(self, member: str, shape: SideNetworkShape, layers: tuple[int, ...], samples_after: int) -> None:
        """Refuse an upload that another member's would not pool with, that adds samples after the
        member finished its upload, or that would take the pool beyond its samples."""
        with self._lock:
            if self._shape is not None and self._shape != (shape, layers):
                raise ProtocolError(f"upload shape {shape} / layers {layers} differ from pool {self.name!r}'s "
                                    f"({self._shape[0]} / {self._shape[1]})")
            state = self._members[member]
            if state.epochs is not None and samples_after > state.samples:
                raise ProtocolError("this member has finished its upload (it asked for training): no new samples")
            total = samples_after + sum(m.samples for name, m in self._members.items() if name != member)
            if self.limits is not None and total > self.limits.max_pool_samples:
                raise self.limits.exceeded("max_pool_samples", f"{total} samples stored in pool {self.name!r}")
            if self._shape is None:
                private_dir(self.root)
                saved = {"shape": asdict(shape), "layers": list(layers)}
                write_atomic(self.root / SHAPE_FILE, json.dumps(saved).encode())
                self._shape = shape, layers

    def stored(self, member: str, samples: int) -> None:
        """The member's cache now holds `samples` samples."""
        with self._lock:
            self._members[member].samples = samples

    def train(self, member: str, epochs: int, check_stop: Callable[[], None]) -> TrainReport | PoolPending:
        """The member has finished its upload and asks for `epochs` epochs: the report of the pool's
        training once its quorum is in (training now if this set of members has not been trained
        on), else a pending answer, and an error once the member has waited too long."""
        with self._lock:
            state = self._members[member]
            if state.epochs is None:
                state.ready_since = time.monotonic()
            state.epochs = max(state.epochs or 0, epochs)
            # A revoked member counts neither for the quorum nor in the training: the pool never trains on
            # fewer members than its quorum (the quorum is how few devices' data a φ may come from).
            members = tuple(sorted(name for name, m in self._members.items()
                                   if m.epochs is not None and m.samples > 0 and self.active(m.identity)))
            if len(members) < self.quorum:
                return self._pending(state, len(members))
            total = max(self._members[name].epochs for name in members)
            if self._trained is None or (self._trained.members, self._trained.epochs) != (members, total):
                self._trained = None  # a failed training leaves no stale network behind
                self._trained = self._fit(members, total, check_stop)
            return self._trained.report

    def _pending(self, state: Member, ready: int) -> PoolPending:
        waited = time.monotonic() - state.ready_since
        if waited > self.wait_seconds:
            what = f"waiting {waited:.0f} s for pool {self.name!r}'s quorum ({ready} of {self.quorum} members ready)"
            if self.limits is not None:
                raise self.limits.exceeded("pool_wait_seconds", what)
            raise ProtocolError(f"{what}: beyond {self.wait_seconds:g} s")
        return PoolPending(ready=ready, quorum=self.quorum, retry_seconds=RETRY_SECONDS,
                           wait_left_seconds=self.wait_seconds - waited)

    def weights(self, member: str) -> tuple[SideWeights, Path]:
        """The pool's φ (as a reply, and its file) for a member it was trained with, while none of the members it
        was trained with is revoked (below its quorum of active members, the pool serves no φ until it can retrain)."""
        with self._lock:
            if self._trained is None or member not in self._trained.members:
                raise ProtocolError(f"pool {self.name!r} has not trained with this member yet: ask for training first")
            if not all(self.active(self._members[name].identity) for name in self._trained.members):
                raise ProtocolError(f"pool {self.name!r}'s side network was trained with a member since revoked: "
                                    f"ask for training first")
            return self._trained.weights, self.root / TRAINED_DIR / SIDE_NETWORK_FILE

    def _union(self, members: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample of the members, by member name and then in upload order."""
        activations, deltas = [], []
        for name in members:
            # Read through a connection of this thread's own: each member's endpoint keeps its own in its thread.
            cache = ActivationCache(self._members[name].namespace / CACHE_FILE)
            try:
                _, acts, delta = cache.load_all()
            finally:
                cache.close()
            activations.append(acts)
            deltas.append(delta)
        return torch.from_numpy(np.concatenate(activations)), torch.from_numpy(np.concatenate(deltas))

    def _fit(self, members: tuple[str, ...], epochs: int, check_stop: Callable[[], None]) -> Trained:
        inputs, targets = self._union(members)
        shape, layers = self._shape
        workdir = self.root / TRAINED_DIR
        if workdir.exists():
            shutil.rmtree(workdir)  # the previous set's network: this one starts from scratch
        private_dir(workdir)
        # Checkpoints only at the start and the end: an interrupted training is simply trained again.
        trainer = SideTrainer(self.training, workdir, check_stop=check_stop, checkpoint_seconds=float("inf"))
        network = AdditiveSideNetwork(shape, self.training.dropout, generator=trainer.init_generator())
        network.fit_input_scaling(inputs)
        trainer.start(network, layers)
        for start in range(0, len(targets), self.training.batch_size):
            end = min(start + self.training.batch_size, len(targets))
            check_stop()
            trainer.train_arrival(inputs[start:end], targets[start:end], end)
        samples, loss = trainer.train_until(epochs, lambda: (inputs, targets, None))
        trainer.save()
        return Trained(members=members, epochs=epochs,
                       report=TrainReport(epochs_done=trainer.epochs_done, samples=samples, loss=loss),
                       weights=SideWeights(state=state_arrays(network), architecture=trainer.architecture()))
