"""The side trainer: one side network's optimizer, schedule, epochs, checkpoints and resume.

It knows nothing of messages, devices or caches: an endpoint (the side-tuning server,
the generation server, the MobiLLM-style reference; the device itself in `device_local`)
gives it batches as they arrive and, for the cached epochs, its whole training set.
Every random draw uses the trainer's own generator, never torch's global one, so another
device served from the same process cannot change this one's weights or shuffling.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from protocol.errors import ProtocolError
from protocol.files import write_atomic
from protocol.model.side_network import AdditiveSideNetwork, network_from_arrays, state_arrays
from protocol.server.recovery import (
    STEP_LOG_FILE, TRAINING_STATE_FILE, StepLog, generator_array, load_optimizer_arrays, optimizer_arrays,
    split_state,
)
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import SIDE_NETWORK_FILE
from protocol.wire.codec import decode, encode

# A loss of the network on one batch (the default: MSE of its output against the targets).
Loss = Callable[[AdditiveSideNetwork, torch.Tensor, torch.Tensor], torch.Tensor]
# Every training row's inputs and targets in arrival order, and the sample boundaries
# (row offsets, n + 1 of them; None: one row per sample).
TrainingSet = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


def cosine_factor(epochs_elapsed: float, horizon: int) -> float:
    """Learning-rate multiplier after `epochs_elapsed` of `horizon` epochs: 1 at the start, 0 at the end."""
    return 0.5 * (1.0 + math.cos(math.pi * min(epochs_elapsed / horizon, 1.0)))


def mse_loss(network: AdditiveSideNetwork, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """PAE's objective: the side values against the prediction difference (or its whitened form)."""
    # Inputs stay in the payload dtype in memory and become float32 one batch at a time.
    return nn.functional.mse_loss(network(inputs.float()), targets)


def rows_of(samples: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """The training rows of the given samples."""
    if offsets is None:
        return samples
    return torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in samples.tolist()])


class SideTrainer:
    """Trains one side network; with a work directory it is durable (checkpoints, restart).

    `served` maps the trained network to the side output a device deploys (the generation
    server folds its target whitening in); `check_stop` is called between batches of the
    cached epochs so that a shutdown abandons an epoch (the last checkpoint stays the truth).
    `checkpoint_seconds`: the least time between two checkpoints after epochs or arrival steps
    (0: after every epoch). Each checkpoint rewrites the network and optimizer state, so this
    bounds the writes a device can cause; a resume from an older checkpoint is as exact, it only
    trains the epochs since again (the shuffling generator and optimizer are in the checkpoint).
    """

    def __init__(self, training: ServerTraining, workdir: Path | None = None,
                 network_class: type[AdditiveSideNetwork] = AdditiveSideNetwork, loss: Loss = mse_loss,
                 served: Callable[[AdditiveSideNetwork], AdditiveSideNetwork] = lambda network: network,
                 check_stop: Callable[[], None] = lambda: None, checkpoint_seconds: float = 0.0) -> None:
        self.training = training
        self.workdir = workdir
        self.network_class = network_class
        self.loss = loss
        self.served = served
        self.check_stop = check_stop
        self.network: AdditiveSideNetwork | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.layers: tuple[int, ...] | None = None
        self.epochs_done = 0
        self.trained_rows = 0  # rows the arrival pass (epoch 1) has trained on
        self.generator = torch.Generator().manual_seed(training.seed)
        self._steps = StepLog(workdir / STEP_LOG_FILE) if workdir is not None else None
        self._arrivals_since_checkpoint = 0
        self.checkpoint_seconds = checkpoint_seconds
        self.steps_taken = 0  # optimizer steps since this trainer was built: changes whenever the network does
        self._saved_at = -math.inf
        self._unsaved_boundary: int | None = None  # steps_taken at an epoch or arrival end not checkpointed yet

    def init_generator(self) -> torch.Generator:
        """The generator a new network draws its initial weights from (seeded, private)."""
        return torch.Generator().manual_seed(self.training.seed)

    def start(self, network: AdditiveSideNetwork, layers: tuple[int, ...]) -> None:
        """Train `network` from now on, with a fresh optimizer; durable before any row is cached,
        so that a restart can always rebuild it."""
        self.network, self.layers = network, layers
        self._make_optimizer()
        self.save()

    def _make_optimizer(self) -> None:
        adapters = {id(self.network.down), id(self.network.up)}
        others = [p for p in self.network.parameters() if id(p) not in adapters]
        # Group order is fixed (gates/head/bias, then adapters): optimizer state is saved by index.
        self.optimizer = torch.optim.AdamW(
            [{"params": others, "lr_scale": 1.0},
             {"params": [self.network.down, self.network.up], "lr_scale": self.training.adapter_lr_scale}],
            lr=self.training.learning_rate, weight_decay=self.training.weight_decay)
        self.set_lr(1.0)

    def set_lr(self, factor: float) -> None:
        """Learning rate of every group: the base rate × the group's scale × `factor`."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.training.learning_rate * group["lr_scale"] * factor

    def step(self, inputs: torch.Tensor, targets: torch.Tensor, loss: Loss | None = None) -> float:
        """One optimizer step on one batch (with the trainer's loss unless `loss` is given); its loss."""
        self.network.train()
        self.optimizer.zero_grad()
        loss = (loss or self.loss)(self.network, inputs, targets)
        loss.backward()
        self.optimizer.step()
        self.steps_taken += 1
        return float(loss.detach())

    def train_arrival(self, inputs: torch.Tensor, targets: torch.Tensor, rows_total: int) -> None:
        """Epoch 1: one step on rows as they arrive (`rows_total` rows trained on after it)."""
        if self._steps is not None:
            self._steps.append(rows_total)
        self.step(inputs, targets)
        self.trained_rows = rows_total
        self._arrivals_since_checkpoint += 1
        if self._arrivals_since_checkpoint >= self.training.checkpoint_every_uploads:
            self._save_when_due()

    def train_until(self, epochs_total: int, training_set: Callable[[], TrainingSet],
                    seconds: float | None = None) -> tuple[int, float]:
        """Cached epochs until `epochs_total` are done (the arrival pass was epoch 1), or, with `seconds`, until the
        first epoch boundary after that long (`epochs_done` says how far it got): (samples, last loss). Asked
        again for the same total, the training goes on where it stopped, on the same schedule."""
        return self.train_epochs(max(0, epochs_total - max(1, self.epochs_done)), training_set, seconds)

    def train_epochs(self, epochs: int, training_set: Callable[[], TrainingSet],
                     seconds: float | None = None) -> tuple[int, float]:
        """`epochs` more epochs over the whole training set, or with `seconds` those done by the first epoch
        boundary after that long: (samples, the last epoch's mean loss)."""
        if self.network is None:
            raise ProtocolError("nothing to train on: no upload received yet")
        if self.epochs_done == 0:
            self.epochs_done = 1  # the streaming pass over uploads was epoch 1
        activations, targets, offsets = training_set()
        samples = len(targets) if offsets is None else len(offsets) - 1
        # The decay spans this request: a restarted server, or a request cut short by `seconds`, asked
        # again for the same total (TrainUntil) resumes on the same schedule.
        horizon = self.epochs_done + epochs
        loss, started = 0.0, time.monotonic()
        for done in range(epochs):
            if done and seconds is not None and time.monotonic() - started >= seconds:
                break  # at least one epoch per request: every request makes progress
            order = torch.randperm(samples, generator=self.generator)
            batches = order.split(self.training.batch_size)
            losses = []
            for index, batch in enumerate(batches):
                self.check_stop()
                if self.training.cosine_decay:
                    self.set_lr(cosine_factor(self.epochs_done + index / len(batches), horizon))
                rows = rows_of(batch, offsets)
                losses.append(self.step(activations[rows], targets[rows]))
            loss = float(np.mean(losses))
            self.epochs_done += 1
            self._save_when_due()
        self.set_lr(1.0)
        return samples, loss

    def architecture(self) -> dict[str, object]:
        """The network's shape, as saved and served."""
        return asdict(self.network.shape)

    def _save_when_due(self) -> None:
        """Checkpoint at an epoch or arrival boundary if `checkpoint_seconds` have passed since the last."""
        if time.monotonic() - self._saved_at >= self.checkpoint_seconds:
            self.save()
        else:
            self._unsaved_boundary = self.steps_taken

    def flush(self) -> None:
        """Write the checkpoint that was not due yet, if the network is still at that boundary
        (work cut short since then is not a state a resume could continue exactly)."""
        if self._unsaved_boundary is not None and self._unsaved_boundary == self.steps_taken:
            self.save()

    def save(self) -> None:
        """Checkpoint: the full training state, then φ alone (the file attacks and devices read)."""
        self._arrivals_since_checkpoint = 0
        self._saved_at, self._unsaved_boundary = time.monotonic(), None
        if self.workdir is None:
            return
        metadata = {"architecture": json.dumps(self.architecture()), "layers": json.dumps(list(self.layers)),
                    "epochs_done": str(self.epochs_done)}
        resume = {**state_arrays(self.network), **optimizer_arrays(self.optimizer),
                  **generator_array(self.generator)}
        write_atomic(self.workdir / TRAINING_STATE_FILE,
                     encode(resume, {**metadata, "trained_rows": str(self.trained_rows)}))
        write_atomic(self.workdir / SIDE_NETWORK_FILE, encode(state_arrays(self.served(self.network)), metadata))

    def restore(self, cached_rows: int) -> None:
        """Resume from the work directory's checkpoint, if any (`cached_rows`: rows the cache holds)."""
        if self.workdir is None:
            return
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
            self.trained_rows = int(metadata.get("trained_rows", cached_rows))
        except (KeyError, ValueError) as exc:
            raise ProtocolError(f"corrupt side-network checkpoint {path}: {exc}") from exc
        self.network = network_from_arrays(state, architecture, self.network_class)
        self._make_optimizer()
        if optimizer:
            load_optimizer_arrays(self.optimizer, optimizer)
        if generator is not None:
            self.generator.set_state(torch.from_numpy(np.array(generator)))

    def catch_up(self, cached_rows: int, training_set: Callable[[], TrainingSet]) -> None:
        """Replay arrival steps whose rows reached the cache after the last checkpoint."""
        if self.network is None or self.epochs_done > 0 or self.trained_rows >= cached_rows:
            return
        bounds = [b for b in self._steps.read() if self.trained_rows < b <= cached_rows]
        if not bounds or bounds[-1] != cached_rows:
            # At most one upload was cached before its boundary was logged (the device
            # waits for each acknowledgement); it was one step.
            self._steps.append(cached_rows)
            bounds.append(cached_rows)
        activations, targets, offsets = training_set()
        start = self.trained_rows
        for end in bounds:
            rows = rows_of(torch.arange(start, end), offsets)
            self.step(activations[rows], targets[rows])
            start = end
        self.trained_rows = cached_rows
        self.save()
