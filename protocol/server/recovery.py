"""What the server needs on disk to resume training exactly after a crash.

`training_state.safetensors` holds φ, the optimizer's moments, the epoch-shuffling RNG
state, the epoch count and how many cache rows epoch 1 has trained on. `StepLog` is an
append-only list of the cache row counts after each epoch-1 training step, so rows that
reached the cache but not a checkpoint are replayed with exactly the original step
boundaries (the resumed run is then bit-identical to an uninterrupted one).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch

from protocol.errors import ProtocolError
from protocol.files import open_private_append

TRAINING_STATE_FILE = "training_state.safetensors"
STEP_LOG_FILE = "epoch1_steps.log"
_OPTIMIZER_PREFIX = "optimizer."
_GENERATOR_KEY = "generator_state"
_ROW = struct.Struct("<Q")


def optimizer_arrays(optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """Per-parameter optimizer state as named float arrays (no pickle)."""
    arrays = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            arrays[f"{_OPTIMIZER_PREFIX}{index}.{name}"] = value.detach().cpu().numpy().reshape(value.shape or (1,))
    return arrays


def load_optimizer_arrays(optimizer: torch.optim.Optimizer, arrays: dict[str, np.ndarray]) -> None:
    """Restore `optimizer_arrays` output into an optimizer built for the same parameters."""
    template = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        if not key.startswith(_OPTIMIZER_PREFIX):
            continue
        index, name = key[len(_OPTIMIZER_PREFIX):].split(".", 1)
        tensor = torch.from_numpy(np.array(value))
        # Moments saved by another parameter layout (an older version) must not be applied.
        if name != "step" and (int(index) >= len(params) or tensor.shape != params[int(index)].shape):
            raise ProtocolError(f"optimizer state {key} does not fit this side network's parameters")
        state.setdefault(int(index), {})[name] = tensor.reshape(()) if name == "step" else tensor
    optimizer.load_state_dict({"state": state, "param_groups": template["param_groups"]})


def split_state(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
    """(network arrays, optimizer arrays, generator state) of a training-state file."""
    network = {k: v for k, v in arrays.items() if not k.startswith(_OPTIMIZER_PREFIX) and k != _GENERATOR_KEY}
    optimizer = {k: v for k, v in arrays.items() if k.startswith(_OPTIMIZER_PREFIX)}
    return network, optimizer, arrays.get(_GENERATOR_KEY)


def generator_array(generator: torch.Generator) -> dict[str, np.ndarray]:
    """The RNG state as a named uint8 array."""
    return {_GENERATOR_KEY: generator.get_state().numpy().copy()}


class StepLog:
    """Append-only cache row counts at the end of each epoch-1 step (u64 each)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, rows: int) -> None:
        """Record that a step ended with `rows` cached rows; durable before training on them."""
        with open_private_append(self.path) as log:
            log.write(_ROW.pack(rows))
            log.flush()
            os.fsync(log.fileno())

    def read(self) -> list[int]:
        """Every recorded boundary; a torn last record (crash mid-write) is ignored."""
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        usable = len(data) - len(data) % _ROW.size
        if usable != len(data):
            os.truncate(self.path, usable)  # so later appends stay aligned
        bounds = [value for (value,) in _ROW.iter_unpack(data[:usable])]
        if bounds != sorted(bounds):
            raise ProtocolError(f"{self.path} is corrupt: boundaries are not increasing")
        return bounds
