"""Label-free server features and the closed-form ridge operator of the CKKS mode.

The server fits a PCA of the standardized, flattened all-layer pivot states (no label
or Δ is involved) and the ridge operator M = (FᵀF + λI)⁻¹Fᵀ; the head W = M·Δ is
then linear in Δ, so the server can compute it on encrypted Δ with plaintext M. The
device's deployed head (`protocol.modes.ckks_ridge.head.RidgeHead`) applies the same map.
"""

from __future__ import annotations

import numpy as np

from protocol.modes.ckks_ridge.head import FeatureMap


def feature_count(n_features: int, samples: int, width: int) -> int:
    """The features a fit asked for `n_features` keeps, for `samples` samples of `width` values each.

    Centered data has rank <= n - 1: a further component is numerically zero, and its
    all-zero ridge row would make a transparent (unencryptable) CKKS product."""
    return min(n_features, samples - 1, width)


def fit_feature_map(activations: np.ndarray, n_features: int, seed: int = 0) -> FeatureMap:
    """Standardize per coordinate and keep the top `n_features` principal directions."""
    flat = activations.reshape(len(activations), -1).astype(np.float32)
    mean = flat.mean(axis=0)
    scale = np.maximum(flat.std(axis=0), 1e-3)
    k = feature_count(n_features, len(flat), flat.shape[1])
    # Imported at the first fit, not when a device opens the mode: scikit-learn and SciPy are about a
    # hundred MiB resident and a second of CPU, which a device whose uploads are refused should not cost.
    from sklearn.decomposition import PCA

    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit((flat - mean) / scale)
    return FeatureMap(mean=mean, scale=scale.astype(np.float32), components=pca.components_.astype(np.float32))


def ridge_operator(features: np.ndarray, ridge: float, gram: np.ndarray | None = None) -> np.ndarray:
    """M = (FᵀF + λI)⁻¹Fᵀ, shape (k+1, n); the bias (last column) is not penalized. `gram`: FᵀF
    when already computed (fits of the same features under other λ share it)."""
    penalty = np.full(features.shape[1], ridge)
    penalty[-1] = 0.0
    return np.linalg.solve((features.T @ features if gram is None else gram) + np.diag(penalty), features.T)
