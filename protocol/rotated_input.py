"""A side output that reads the pivot states in the device's secret rotated coordinates.

Under the `activation_rotation` mechanism the device uploads A_i·R_i (one secret random
orthogonal R_i per layer), so the server trains its side output on rotated states. The
deployed side output must read them the same way: `RotatedInput` applies R to the
device's own (plain) pivot states, rounds them to the payload dtype exactly as the upload
did, and hands them to the inner side output. R is saved in the device's model file with
the inner output's arrays; it never travels to the server.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

# The mechanism's name (secure_assist.mechanisms): attacks read it from the public
# knowledge (the server knows which mechanism runs, not its secret).
ROTATION_MECHANISM = "activation_rotation"
_ROTATIONS = "rotation.matrices"
_INNER = "inner."
PAYLOAD_NUMPY = {"float16": np.float16, "float32": np.float32}


def rotate(activations: np.ndarray, rotations: np.ndarray, payload_dtype: str) -> np.ndarray:
    """A_i·R_i for every layer i of (n, L, d) states, rounded to the payload dtype (the
    upload's rounding), returned as float32. The one implementation of the map, shared by
    the mechanism and the deployed side output so both see the same values."""
    values = np.asarray(activations, dtype=np.float64).transpose(1, 0, 2)  # (L, n, d): one matmul per layer
    rotated = np.matmul(values, rotations.astype(np.float64)).transpose(1, 0, 2)
    return rotated.astype(PAYLOAD_NUMPY[payload_dtype]).astype(np.float32)


def unrotate(activations: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """The inverse map A_i·R_iᵀ (float32): rotated states back to the backbone's coordinates."""
    values = np.asarray(activations, dtype=np.float32).transpose(1, 0, 2)
    return np.matmul(values, rotations.astype(np.float32).transpose(0, 2, 1)).transpose(1, 0, 2).copy()


def check_rotations(rotations: np.ndarray, tolerance: float = 1e-4) -> np.ndarray:
    """(L, d, d) float32 matrices, each orthogonal; anything else is a ValueError."""
    rotations = np.asarray(rotations, dtype=np.float32)
    if rotations.ndim != 3 or rotations.shape[1] != rotations.shape[2]:
        raise ValueError(f"rotations must be (layers, d, d), got {rotations.shape}")
    identity = np.eye(rotations.shape[1])
    worst = max(float(np.abs(r.astype(np.float64) @ r.T.astype(np.float64) - identity).max()) for r in rotations)
    if worst > tolerance:
        raise ValueError(f"rotation matrices are not orthogonal (max |RRᵀ - I| = {worst:.2e})")
    return rotations


class RotatedInput(torch.nn.Module):
    """Side output g(A·R) of any inner side output g (a `SideOutput` of kind 'rotated_input')."""

    KIND = "rotated_input"

    def __init__(self, inner: Any, rotations: np.ndarray, payload_dtype: str = "float32") -> None:
        super().__init__()
        if payload_dtype not in PAYLOAD_NUMPY:
            raise ValueError(f"payload dtype {payload_dtype!r} not in {sorted(PAYLOAD_NUMPY)}")
        self.inner = inner
        self.rotations = check_rotations(rotations)
        self.payload_dtype = payload_dtype

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        """(n, C) side values of plain pivot states (n, L, d)."""
        states = activations.detach().cpu().float().numpy()
        if states.ndim != 3 or states.shape[1:] != self.rotations.shape[:2]:
            raise ValueError(f"rotated side output expects activations (n, {self.rotations.shape[0]}, "
                             f"{self.rotations.shape[1]}), got {tuple(states.shape)}")
        return self.inner(torch.from_numpy(rotate(states, self.rotations, self.payload_dtype)))

    @property
    def n_outputs(self) -> int:
        """C, the inner output's number of side values."""
        return self.inner.n_outputs

    def map_outputs_(self, matrix: np.ndarray) -> None:
        """The output map acts on the inner output (the rotation is on the input side)."""
        self.inner.map_outputs_(matrix)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """The inner output's tensors (prefixed), R, and both architectures."""
        state, architecture = self.inner.to_arrays()
        tensors = {_INNER + name: value for name, value in state.items()}
        tensors[_ROTATIONS] = self.rotations
        return tensors, {"inner_kind": self.inner.KIND, "inner_architecture": json.dumps(architecture),
                         "payload_dtype": self.payload_dtype}

    @classmethod
    def from_arrays(cls, state: dict[str, np.ndarray], architecture: dict[str, object]) -> "RotatedInput":
        """Rebuild the inner output from the registry of side outputs, then wrap it."""
        # Imported here: the registry module imports this one to register the kind.
        from protocol.side_output import side_output_from_arrays

        if set(architecture) != {"inner_kind", "inner_architecture", "payload_dtype"} or _ROTATIONS not in state:
            raise ValueError("a rotated side output holds rotation.matrices, inner_kind, inner_architecture and "
                             "payload_dtype")
        inner_state = {name[len(_INNER):]: value for name, value in state.items() if name.startswith(_INNER)}
        if len(inner_state) + 1 != len(state):
            raise ValueError("unexpected tensors in a rotated side output")
        inner = side_output_from_arrays(str(architecture["inner_kind"]), inner_state,
                                        json.loads(str(architecture["inner_architecture"])))
        return cls(inner, state[_ROTATIONS], str(architecture["payload_dtype"]))


def input_rotations(side: Any) -> np.ndarray | None:
    """The secret rotations a deployed side output applies to its input, None if it reads
    plain states (the auditor's ground truth for alignment attacks)."""
    return getattr(side, "rotations", None) if getattr(side, "KIND", None) == RotatedInput.KIND else None
