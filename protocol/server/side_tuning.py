"""The server role: cache uploads, train the side network on Δ, serve φ.

The server holds the side network, its optimizer and the activation cache, and no
device secret. Epoch 1 trains on each upload as it arrives; later epochs run from
the cache alone, with zero device work and zero traffic. Every message in and out
is recorded in the server's view (`protocol.server.transcript`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from protocol.server.cache import ActivationCache
from protocol.wire.codec import DEFAULT_MAX_BYTES, decode, encode
from protocol.errors import ProtocolError, UserInputError
from protocol.files import write_atomic
from protocol.server.endpoint import RecordingEndpoint
from protocol.server.limits import ServerLimits
from protocol.wire.messages import (
    FetchWeights, Message, ResentUpload, SideWeights, TrainReport, TrainRequest, TrainUntil, Upload, UploadAck,
    encode_message,
)
from protocol.server.recovery import (
    STEP_LOG_FILE, TRAINING_STATE_FILE, StepLog, generator_array, load_optimizer_arrays, optimizer_arrays,
    split_state,
)
from protocol.model.side_network import AdditiveSideNetwork, SideNetworkShape, network_from_arrays, state_arrays
from protocol.server.transcript import CACHE_FILE, SIDE_NETWORK_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerTraining:
    """Side-network hyper-parameters (server side).

    At a constant rate the side network's dev accuracy swings from epoch to epoch (so the
    served weights depend on where training stops), and on some prompts adapters at the full
    rate overfit where the gates and head alone do not (BENCHMARKS.md, "Prompt and recipe").
    So the adapters learn at `adapter_lr_scale` times the rate, AdamW's decoupled weight decay
    is strong, and the cached epochs follow a cosine decay.
    """

    rank: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1.0
    adapter_lr_scale: float = 0.01
    cosine_decay: bool = True  # False: a constant learning rate (the pre-measurement recipe)
    batch_size: int = 32
    dropout: float = 0.0
    seed: int = 0
    # Epoch 1 writes a full checkpoint every this many uploads; rows after it are replayed
    # from the cache on restart (see protocol.server.recovery), so this only bounds restart time.
    checkpoint_every_uploads: int = 32

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise UserInputError(f"learning_rate must be positive, got {self.learning_rate}")
        for name in ("weight_decay", "adapter_lr_scale"):
            if not getattr(self, name) >= 0:
                raise UserInputError(f"{name} must be zero or positive, got {getattr(self, name)}")


def cosine_factor(epochs_elapsed: float, horizon: int) -> float:
    """Learning-rate multiplier after `epochs_elapsed` of `horizon` epochs: 1 at the start, 0 at the end."""
    return 0.5 * (1.0 + math.cos(math.pi * min(epochs_elapsed / horizon, 1.0)))


class SideTuningServer(RecordingEndpoint):
    """PAE server for one device; its work directory is its whole view.

    Training batches are drawn by sample; a subclass whose samples own several rows (the
    generation server: one row per loss position) says so through `_training_set`.

    Devices are served from threads of one process, so every random draw uses this
    device's own generators, never torch's global one: another device's timing cannot
    change this device's initial weights or shuffling.
    """

    NETWORK: ClassVar[type[AdditiveSideNetwork]] = AdditiveSideNetwork
    UPLOAD: ClassVar[type[Message]] = Upload

    def __init__(self, workdir: Path | str, training: ServerTraining = ServerTraining(),
                 max_message_bytes: int = DEFAULT_MAX_BYTES, limits: ServerLimits | None = None,
                 stop: threading.Event | None = None) -> None:
        super().__init__(workdir, max_message_bytes, limits, stop)
        self.training = training
        self.cache = self._open_cache()
        self.network: AdditiveSideNetwork | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.layers: tuple[int, ...] | None = None
        self.epochs_done = 0
        self._generator = torch.Generator().manual_seed(training.seed)
        self._steps = StepLog(self.workdir / STEP_LOG_FILE)
        self._trained_rows = 0  # cache rows epoch 1 has trained on
        self._uploads_since_checkpoint = 0
        self._restore_checkpoint()
        self._catch_up()
        log.info("work directory open: %d cached samples, %d epochs done", len(self.cache), self.epochs_done)

    def close(self) -> None:
        """Release the cache and transcript files."""
        self.cache.close()
        super().close()

    def _open_cache(self) -> ActivationCache:
        return ActivationCache(self.workdir / CACHE_FILE)

    def handle(self, message: Message) -> Message:
        """Dispatch one decoded request."""
        if isinstance(message, self.UPLOAD):
            return self._on_upload(message)
        if isinstance(message, TrainRequest):
            return self._on_train(message.epochs)
        if isinstance(message, TrainUntil):
            return self._on_train(max(0, message.epochs_total - max(1, self.epochs_done)))
        if isinstance(message, FetchWeights):
            return self._weights_message()
        return super().handle(message)

    def _output_size(self, upload: Upload) -> int:
        """Side values per row: C, the classes of Δ."""
        return upload.delta.shape[1]

    def admit(self, message: Message) -> None:
        """The endpoint-generic limits, and the epochs a training request would reach."""
        super().admit(message)
        if self.limits is None:
            return
        if isinstance(message, TrainUntil):
            self.limits.check_epochs(message.epochs_total)
        elif isinstance(message, TrainRequest):
            self.limits.check_epochs(max(1, self.epochs_done) + message.epochs)

    def samples_after(self, message: Message) -> int:
        """Cached samples once `message` is stored (repeated ids are not stored again)."""
        if isinstance(message, self.UPLOAD):
            return len(self.cache) + self.cache.count_new(message.sample_ids)
        return len(self.cache)

    def recorded_form(self, message: Message, data: bytes) -> bytes:
        """A re-sent upload the cache holds exactly is recorded by ids and digest: it tells the
        server nothing new, and re-sending must not grow the transcript by a full copy each time."""
        if isinstance(message, self.UPLOAD) and message.layers == self.layers and self._holds(message):
            return encode_message(ResentUpload(sample_ids=message.sample_ids,
                                               sha256=hashlib.sha256(data).hexdigest(), wire_bytes=len(data)))
        return data

    def _holds(self, upload: Upload) -> bool:
        """Whether the cache holds every sample of `upload` with exactly its values."""
        return self.cache.holds(upload.sample_ids, upload.activations, upload.delta)

    def _ensure_network(self, upload: Upload) -> None:
        shape = SideNetworkShape(n_layers=upload.activations.shape[1], hidden_size=upload.activations.shape[2],
                                 rank=self.training.rank, n_classes=self._output_size(upload))
        if self.network is None:
            init = torch.Generator().manual_seed(self.training.seed)
            self.network = self.NETWORK(shape, self.training.dropout, generator=init)
            # The first upload fixes the input standardization (see side_network's docstring).
            self.network.fit_input_scaling(torch.from_numpy(upload.activations.astype(np.float32)))
            self.layers = upload.layers
            self._make_optimizer()
            # Durable before any row is cached, so a restart can always rebuild the network.
            self._save_checkpoint()
        elif shape != self.network.shape or upload.layers != self.layers:
            raise ProtocolError(
                f"upload shape {shape} / layers {upload.layers} differ from earlier uploads "
                f"({self.network.shape} / {self.layers})"
            )

    def _make_optimizer(self) -> None:
        adapters = {id(self.network.down), id(self.network.up)}
        others = [p for p in self.network.parameters() if id(p) not in adapters]
        # Group order is fixed (gates/head/bias, then adapters): optimizer state is saved by index.
        self.optimizer = torch.optim.AdamW(
            [{"params": others, "lr_scale": 1.0},
             {"params": [self.network.down, self.network.up], "lr_scale": self.training.adapter_lr_scale}],
            lr=self.training.learning_rate, weight_decay=self.training.weight_decay)
        self._set_lr(1.0)

    def _set_lr(self, factor: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.training.learning_rate * group["lr_scale"] * factor

    def _store(self, upload: Upload) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Cache the upload: (which samples were new, the new samples' training inputs and targets)."""
        new = self.cache.put_many(upload.sample_ids, upload.activations, upload.delta)
        return new, torch.from_numpy(upload.activations[new]), torch.from_numpy(upload.delta[new])

    def _training_set(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Every cached row's inputs and targets in arrival order, and the sample boundaries
        (row offsets, n + 1 of them; None: one row per sample)."""
        _, acts, delta = self.cache.load_all()
        return torch.from_numpy(acts), torch.from_numpy(delta), None

    @staticmethod
    def _rows(samples: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
        """The rows of the given samples."""
        if offsets is None:
            return samples
        return torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in samples.tolist()])

    def _on_upload(self, upload: Upload) -> UploadAck:
        self._ensure_network(upload)
        new, inputs, targets = self._store(upload)
        if new.any():
            self._steps.append(self._trained_rows + int(new.sum()))
            # Epoch 1 consumes uploads as they arrive; a resent sample is not trained on twice.
            self._step(inputs, targets)
            self._trained_rows += int(new.sum())
            self._uploads_since_checkpoint += 1
            if self._uploads_since_checkpoint >= self.training.checkpoint_every_uploads:
                self._save_checkpoint()
        return UploadAck(stored=int(new.sum()), duplicates=int((~new).sum()))

    def _step(self, activations: torch.Tensor, delta: torch.Tensor) -> float:
        self.network.train()
        self.optimizer.zero_grad()
        # Inputs stay in the payload dtype in memory and become float32 one batch at a time.
        loss = nn.functional.mse_loss(self.network(activations.float()), delta)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def _on_train(self, epochs: int) -> TrainReport:
        if self.network is None:
            raise ProtocolError("nothing to train on: no upload received yet")
        if self.epochs_done == 0:
            self.epochs_done = 1  # the streaming pass over uploads was epoch 1
        activations, targets, offsets = self._training_set()
        samples = len(targets) if offsets is None else len(offsets) - 1
        # The decay spans this request: a restarted server asked for the same total
        # (TrainUntil) resumes on the same schedule.
        horizon = self.epochs_done + epochs
        loss = 0.0
        for _ in range(epochs):
            order = torch.randperm(samples, generator=self._generator)
            batches = order.split(self.training.batch_size)
            losses = []
            for index, batch in enumerate(batches):
                self.check_stop()  # a shutdown abandons the epoch; the last checkpoint stays the truth
                if self.training.cosine_decay:
                    self._set_lr(cosine_factor(self.epochs_done + index / len(batches), horizon))
                rows = self._rows(batch, offsets)
                losses.append(self._step(activations[rows], targets[rows]))
            loss = float(np.mean(losses))
            self.epochs_done += 1
            self._save_checkpoint()
        self._set_lr(1.0)
        return TrainReport(epochs_done=self.epochs_done, samples=samples, loss=loss)

    def _served_network(self) -> AdditiveSideNetwork:
        """The side output as the device deploys it (the trained network itself here)."""
        return self.network

    def _weights_message(self) -> SideWeights:
        if self.network is None:
            raise ProtocolError("no side network yet: upload first")
        return SideWeights(state=state_arrays(self._served_network()), architecture=self._architecture())

    def _architecture(self) -> dict[str, object]:
        return asdict(self.network.shape)

    def _save_checkpoint(self) -> None:
        metadata = {"architecture": json.dumps(self._architecture()), "layers": json.dumps(list(self.layers)),
                    "epochs_done": str(self.epochs_done)}
        network = state_arrays(self.network)
        # The full training state first, then φ alone (the file attacks and devices read).
        resume = {**network, **optimizer_arrays(self.optimizer), **generator_array(self._generator)}
        write_atomic(self.workdir / TRAINING_STATE_FILE,
                     encode(resume, {**metadata, "trained_rows": str(self._trained_rows)}))
        write_atomic(self.workdir / SIDE_NETWORK_FILE, encode(state_arrays(self._served_network()), metadata))
        self._uploads_since_checkpoint = 0

    def _restore_checkpoint(self) -> None:
        path = self.workdir / TRAINING_STATE_FILE
        if not path.is_file():
            path = self.workdir / SIDE_NETWORK_FILE  # φ only (older work directories)
        if not path.is_file():
            return
        arrays, metadata = decode(path.read_bytes())
        state, optimizer, generator = split_state(arrays)
        try:
            architecture = json.loads(metadata["architecture"])
            self.layers = tuple(json.loads(metadata["layers"]))
            self.epochs_done = int(metadata["epochs_done"])
            # Without a record, every cached row was trained on (older work directories).
            self._trained_rows = int(metadata.get("trained_rows", len(self.cache)))
        except (KeyError, ValueError) as exc:
            raise ProtocolError(f"corrupt side-network checkpoint {path}: {exc}") from exc
        self.network = network_from_arrays(state, architecture, self.NETWORK)
        self._make_optimizer()
        if optimizer:
            load_optimizer_arrays(self.optimizer, optimizer)
        if generator is not None:
            self._generator.set_state(torch.from_numpy(np.array(generator)))

    def _catch_up(self) -> None:
        """Replay epoch-1 steps whose rows reached the cache after the last checkpoint."""
        total = len(self.cache)
        if self.network is None or self.epochs_done > 0 or self._trained_rows >= total:
            return
        bounds = [b for b in self._steps.read() if self._trained_rows < b <= total]
        if not bounds or bounds[-1] != total:
            # At most one upload was cached before its boundary was logged (the device
            # waits for each acknowledgement); it was one step.
            self._steps.append(total)
            bounds.append(total)
        activations, targets, offsets = self._training_set()
        start = self._trained_rows
        for end in bounds:
            rows = self._rows(torch.arange(start, end), offsets)
            self._step(activations[rows], targets[rows])
            start = end
        self._trained_rows = total
        self._save_checkpoint()
