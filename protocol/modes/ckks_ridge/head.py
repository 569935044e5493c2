"""The ridge head of the CKKS mode as a deployable side output: F(A)·W added to p_b.

The server fits the feature map F (a label-free PCA it computes on the activations it
receives) and enc(W); the device decrypts W and keeps this head. It is a
`torch.nn.Module` mapping pivot activations (n, L, d) to C side values, like the side
network φ, so local prediction, the safeguard and the model file treat both alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_TENSORS = ("ridge.mean", "ridge.scale", "ridge.components", "ridge.weights")


@dataclass
class FeatureMap:
    """F(A) = [PCA_k(standardize(flatten(A))), 1]."""

    mean: np.ndarray  # (L·d,)
    scale: np.ndarray  # (L·d,)
    components: np.ndarray  # (k, L·d)

    def apply(self, activations: np.ndarray) -> np.ndarray:
        """(n, k+1) features, the last column the bias."""
        flat = (activations.reshape(len(activations), -1).astype(np.float32) - self.mean) / self.scale
        projected = flat @ self.components.T
        return np.hstack([projected, np.ones((len(flat), 1), dtype=np.float32)]).astype(np.float64)


class RidgeHead(torch.nn.Module):
    """The device's deployed head in CKKS mode: side output F(A)·W (a `SideOutput`)."""

    KIND = "ridge_head"

    def __init__(self, feature_map: FeatureMap, weights: np.ndarray) -> None:
        super().__init__()
        if weights.ndim != 2 or weights.shape[0] != feature_map.components.shape[0] + 1:
            raise ValueError(f"ridge weights {weights.shape} do not fit {feature_map.components.shape[0]} features")
        self.feature_map = feature_map
        self.weights = np.asarray(weights, dtype=np.float64)  # (k+1, C)

    @property
    def n_classes(self) -> int:
        """C, the number of side values."""
        return self.weights.shape[1]

    def predict(self, activations: np.ndarray) -> np.ndarray:
        """(n, C) side output of numpy activations."""
        return self.feature_map.apply(activations) @ self.weights

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        """(n, C) float32 side output of pivot activations (n, L, d)."""
        return torch.from_numpy(self.predict(activations.detach().cpu().float().numpy()).astype(np.float32))

    @property
    def n_outputs(self) -> int:
        """C, the number of side values."""
        return self.n_classes

    def map_outputs_(self, matrix: np.ndarray) -> None:
        """Make the output F(A)·W·M (linear in W)."""
        self.weights = self.weights @ np.asarray(matrix, dtype=np.float64)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """(tensors, architecture) for the model file."""
        state = dict(zip(_TENSORS, (self.feature_map.mean, self.feature_map.scale, self.feature_map.components,
                                    self.weights)))
        return state, {"n_features": int(self.feature_map.components.shape[0]), "n_classes": self.n_classes}

    @classmethod
    def from_arrays(cls, state: dict[str, np.ndarray], architecture: dict[str, object]) -> "RidgeHead":
        """Rebuild from `to_arrays` output; inconsistent shapes are errors."""
        if set(state) != set(_TENSORS):
            raise ValueError(f"a ridge head holds {sorted(_TENSORS)}, got {sorted(state)}")
        mean, scale, components, weights = (state[name] for name in _TENSORS)
        if mean.shape != scale.shape or components.shape[1:] != mean.shape:
            raise ValueError("inconsistent ridge feature map shapes")
        return cls(FeatureMap(mean=mean, scale=scale, components=components), weights)
