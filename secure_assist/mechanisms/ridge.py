"""Label-free server features and the closed-form ridge head of the CKKS mode.

The server fits a PCA of the standardized, flattened all-layer pivot states (no label
or Δ is involved) and the ridge operator M = (FᵀF + λI)⁻¹Fᵀ; the head W = M·Δ is
then linear in Δ, so the server can compute it on encrypted Δ with plaintext M.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA


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


def fit_feature_map(activations: np.ndarray, n_features: int, seed: int = 0) -> FeatureMap:
    """Standardize per coordinate and keep the top `n_features` principal directions."""
    flat = activations.reshape(len(activations), -1).astype(np.float32)
    mean = flat.mean(axis=0)
    scale = np.maximum(flat.std(axis=0), 1e-3)
    k = min(n_features, *flat.shape)
    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit((flat - mean) / scale)
    return FeatureMap(mean=mean, scale=scale.astype(np.float32), components=pca.components_.astype(np.float32))


def ridge_operator(features: np.ndarray, ridge: float) -> np.ndarray:
    """M = (FᵀF + λI)⁻¹Fᵀ, shape (k+1, n); the bias (last column) is not penalized."""
    penalty = np.full(features.shape[1], ridge)
    penalty[-1] = 0.0
    return np.linalg.solve(features.T @ features + np.diag(penalty), features.T)


@dataclass
class RidgeHead:
    """The device's deployed head in CKKS mode: side output F(A)·W added to p_b."""

    feature_map: FeatureMap
    weights: np.ndarray  # (k+1, C)

    def predict(self, activations: np.ndarray) -> np.ndarray:
        """(n, C) side output."""
        return self.feature_map.apply(activations) @ self.weights
