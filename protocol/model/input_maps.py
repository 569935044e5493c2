"""Side outputs that read the device's pivot states through the map a mechanism applied.

A mechanism that transforms the activations before upload makes the server train its side
output on transformed states; the deployed side output must read the device's own states
the same way. `activation_rotation` uploads A_i·R_i (one secret random orthogonal R_i per
layer): `RotatedInput` applies R, rounded to the payload dtype exactly as the upload was,
and R is saved in the device's model file with the inner output's arrays; it never travels
to the server. `activation_noise` uploads clipped (and noised) states: `ClippedInput`
applies the same clip (no noise: it is zero-mean).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

_ROTATIONS = "rotation.matrices"
_INNER = "inner."
PAYLOAD_NUMPY = {"float16": np.float16, "float32": np.float32}


def clip_rows(values: np.ndarray, bound: float) -> np.ndarray:
    """Scale each vector along the last axis to L2 norm at most `bound`."""
    norms = np.linalg.norm(values, axis=-1, keepdims=True)
    return values * np.minimum(1.0, bound / np.maximum(norms, 1e-12))


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


class InputMapped(torch.nn.Module):
    """Base of the side outputs g(map(A)): the inner side output reads the device's pivot
    states through a device-side map, the one the mechanism applied before uploading.
    Subclasses set KIND and implement `map_states`, `own_arrays` and `from_own`."""

    KIND = ""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def map_states(self, states: np.ndarray) -> np.ndarray:
        """The map applied to plain (n, L, d) states (subclasses)."""
        raise NotImplementedError

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        """(n, C) side values of plain pivot states (n, L, d)."""
        return self.inner(torch.from_numpy(self.map_states(activations.detach().cpu().float().numpy())))

    @property
    def n_outputs(self) -> int:
        """C, the inner output's number of side values."""
        return self.inner.n_outputs

    def map_outputs_(self, matrix: np.ndarray) -> None:
        """The output map acts on the inner output (the map is on the input side)."""
        self.inner.map_outputs_(matrix)

    def own_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """The map's own tensors and architecture entries (subclasses)."""
        raise NotImplementedError

    @classmethod
    def from_own(cls, inner: Any, state: dict[str, np.ndarray], architecture: dict[str, object]) -> "InputMapped":
        """Rebuild around `inner` from `own_arrays` output (subclasses)."""
        raise NotImplementedError

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """The inner output's tensors (prefixed), the map's own, and both architectures."""
        state, architecture = self.inner.to_arrays()
        own_state, own_architecture = self.own_arrays()
        tensors = {**{_INNER + name: value for name, value in state.items()}, **own_state}
        return tensors, {"inner_kind": self.inner.KIND, "inner_architecture": json.dumps(architecture),
                         **own_architecture}

    @staticmethod
    def split_arrays(state: dict[str, np.ndarray], architecture: dict[str, object]
                     ) -> tuple[str, dict[str, np.ndarray], dict[str, object], dict[str, np.ndarray], dict[str, object]]:
        """`to_arrays` output taken apart: (inner kind, inner tensors, inner architecture, the map's
        own tensors, the map's own architecture); the registry of side outputs rebuilds the inner one."""
        try:
            inner = (str(architecture["inner_kind"]),
                     {k[len(_INNER):]: v for k, v in state.items() if k.startswith(_INNER)},
                     json.loads(str(architecture["inner_architecture"])))
        except KeyError as exc:
            raise ValueError(f"a wrapped side output lacks {exc}") from exc
        own = {k: v for k, v in state.items() if not k.startswith(_INNER)}
        return (*inner, own, {k: v for k, v in architecture.items() if k not in ("inner_kind", "inner_architecture")})


class RotatedInput(InputMapped):
    """Side output g(A·R) of any inner side output g (kind 'rotated_input')."""

    KIND = "rotated_input"

    def __init__(self, inner: Any, rotations: np.ndarray, payload_dtype: str = "float32") -> None:
        super().__init__(inner)
        if payload_dtype not in PAYLOAD_NUMPY:
            raise ValueError(f"payload dtype {payload_dtype!r} not in {sorted(PAYLOAD_NUMPY)}")
        self.rotations = check_rotations(rotations)
        self.payload_dtype = payload_dtype

    def map_states(self, states: np.ndarray) -> np.ndarray:
        if states.ndim != 3 or states.shape[1:] != self.rotations.shape[:2]:
            raise ValueError(f"rotated side output expects activations (n, {self.rotations.shape[0]}, "
                             f"{self.rotations.shape[1]}), got {tuple(states.shape)}")
        return rotate(states, self.rotations, self.payload_dtype)

    def own_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {_ROTATIONS: self.rotations}, {"payload_dtype": self.payload_dtype}

    @classmethod
    def from_own(cls, inner: Any, state: dict[str, np.ndarray], architecture: dict[str, object]) -> "RotatedInput":
        if set(state) != {_ROTATIONS} or set(architecture) != {"payload_dtype"}:
            raise ValueError("a rotated side output holds rotation.matrices and its payload dtype")
        return cls(inner, state[_ROTATIONS], str(architecture["payload_dtype"]))


class ClippedInput(InputMapped):
    """Side output g(clip(A)) of any inner side output g (kind 'clipped_input'): each layer's
    vector scaled to L2 norm at most the bound, as `activation_noise` clipped the uploads."""

    KIND = "clipped_input"

    def __init__(self, inner: Any, bound: float) -> None:
        super().__init__(inner)
        if not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
            raise ValueError(f"clip bound must be a positive number, got {bound!r}")
        self.bound = float(bound)

    def map_states(self, states: np.ndarray) -> np.ndarray:
        return clip_rows(states, self.bound).astype(np.float32)

    def own_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {}, {"clip_bound": self.bound}

    @classmethod
    def from_own(cls, inner: Any, state: dict[str, np.ndarray], architecture: dict[str, object]) -> "ClippedInput":
        if state or set(architecture) != {"clip_bound"}:
            raise ValueError("a clipped side output holds its clip bound only")
        return cls(inner, architecture["clip_bound"])  # type: ignore[arg-type]


def input_rotations(side: Any) -> np.ndarray | None:
    """The secret rotations a deployed side output applies to its input, None if it reads
    plain states (the auditor's ground truth for alignment attacks)."""
    while isinstance(side, InputMapped):
        if isinstance(side, RotatedInput):
            return side.rotations
        side = side.inner
    return None
