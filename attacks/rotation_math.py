"""The maths of attacking a secret per-layer rotation of the pivot states (pure functions).

Convention: the device sends X = P·R for plain states P (rows are samples) and a secret
orthogonal R; an estimate R̂ realigns the received states as X·R̂ᵀ. Everything here is
rotation-aware linear algebra on one layer's (n, d) states, or on (n, L, d) stacks:

- `procrustes`: the orthogonal R̂ minimizing ‖P·R̂ − X‖ from paired rows (known pairs);
- `eigen_alignment`: unpaired, from the covariance eigenvectors of received and public
  states, signs fixed by the mean and the third moments, high-variance directions weighted;
- `wasserstein_procrustes`: unpaired refinement, alternating an optimal one-to-one
  assignment of realigned received states to public states with a Procrustes step;
- `invariant_match`: matching received states to candidate texts by what a rotation keeps,
  the per-layer norms, then inner products with confidently matched anchors (the
  within-layer Gram structure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def procrustes(plain: np.ndarray, received: np.ndarray) -> np.ndarray:
    """R̂ = argmin over orthogonal R of ‖plain·R − received‖_F for paired rows (d×d).

    With k < d pairs R̂ is exact on the span of the plain rows only: that is what k known
    pairs can tell."""
    u, _, vt = np.linalg.svd(plain.astype(np.float64).T @ received.astype(np.float64))
    return u @ vt


def _eigen(states: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, eigenvalues descending, eigenvectors as columns) of one layer's states."""
    mean = states.mean(axis=0)
    centred = states - mean
    values, vectors = np.linalg.eigh(centred.T @ centred / max(1, len(states) - 1))
    return mean, values[::-1].clip(0.0), vectors[:, ::-1]


def _sign_evidence(states: np.ndarray, mean: np.ndarray, vectors: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per eigen-direction: (standardized mean projection, skewness), both odd in the sign of
    the direction, so their agreement between two sets tells the sign of the match."""
    projections = (states - mean) @ vectors
    scale = np.sqrt(values).clip(1e-12)
    skew = (projections ** 3).mean(axis=0) / scale ** 3
    return np.stack([mean @ vectors / scale, skew], axis=1)


def eigen_alignment(received: np.ndarray, public: np.ndarray, directions: int = 64) -> np.ndarray:
    """Unpaired first estimate of R from one layer's received and public states.

    Cov(X) = Rᵀ·Cov(P)·R, so the eigenvectors match through R up to sign where their
    eigenvalues stand apart; the mean (μ_X = μ_P·R) is the first anchor and the `directions`
    highest-variance eigenvectors, weighted by their standard deviation, the others."""
    mean_x, values_x, vectors_x = _eigen(received)
    mean_p, values_p, vectors_p = _eigen(public)
    k = min(directions, received.shape[1], len(received) - 1, len(public) - 1)
    evidence = (_sign_evidence(received, mean_x, vectors_x[:, :k], values_x[:k])
                * _sign_evidence(public, mean_p, vectors_p[:, :k], values_p[:k])).sum(axis=1)
    signs = np.where(evidence >= 0, 1.0, -1.0)
    weights = np.sqrt(np.sqrt(values_x[:k] * values_p[:k]))
    source = np.vstack([mean_p, (vectors_p[:, :k] * weights).T])
    target = np.vstack([mean_x, (vectors_x[:, :k] * weights * signs).T])
    return procrustes(source, target)


def wasserstein_procrustes(received: np.ndarray, public: np.ndarray, start: np.ndarray, iterations: int = 10,
                           sample: int = 1000, seed: int = 0) -> np.ndarray:
    """Refine R̂ (unpaired): assign realigned received states one-to-one to public states
    (an exact optimal transport plan between equal-size samples), then a Procrustes step on
    the assigned pairs; stops when the assignment no longer changes."""
    rng = np.random.default_rng(seed)
    size = min(sample, len(received), len(public))
    x = received[rng.choice(len(received), size, replace=False)].astype(np.float64)
    p = public[rng.choice(len(public), size, replace=False)].astype(np.float64)
    rotation, previous = start, None
    for _ in range(iterations):
        _, assignment = linear_sum_assignment(cdist(x @ rotation.T, p, "sqeuclidean"))
        if previous is not None and np.array_equal(assignment, previous):
            break
        rotation, previous = procrustes(p[assignment], x), assignment
    return rotation


def log_norms(states: np.ndarray) -> np.ndarray:
    """(n, L) log L2 norms per layer: unchanged by any per-layer rotation."""
    return np.log(np.linalg.norm(states.astype(np.float64), axis=-1).clip(1e-12))


@dataclass(frozen=True)
class Matching:
    """Received sample i matched to candidate `index[i]`, with a margin (distance to the
    second-best candidate minus distance to the best: large = confident)."""

    index: np.ndarray
    margin: np.ndarray


def _nearest(features: np.ndarray, candidates: np.ndarray) -> Matching:
    """Nearest and second-nearest candidate by Euclidean distance (squared distances by BLAS)."""
    candidates = candidates.astype(np.float64)
    squared = (candidates ** 2).sum(axis=1)
    index, margin = [], []
    for start in range(0, len(features), 512):
        block = features[start:start + 512].astype(np.float64)
        distances = np.sqrt(np.maximum(squared[None] - 2 * block @ candidates.T + (block ** 2).sum(axis=1)[:, None],
                                       0.0))
        order = np.argsort(distances, axis=1)[:, :2]
        best = np.take_along_axis(distances, order, axis=1)
        index.append(order[:, 0])
        margin.append(best[:, 1] - best[:, 0] if best.shape[1] > 1 else np.full(len(best), np.inf))
    return Matching(index=np.concatenate(index), margin=np.concatenate(margin))


def norm_match(received: np.ndarray, candidates: np.ndarray) -> Matching:
    """Nearest candidate by per-layer log norms, each layer scaled by the candidates' spread."""
    x, c = log_norms(received), log_norms(candidates)
    scale = c.std(axis=0).clip(1e-6)
    return _nearest(x / scale, c / scale)


def gram_match(received: np.ndarray, candidates: np.ndarray, anchors: np.ndarray, anchor_candidates: np.ndarray,
               layers: np.ndarray) -> Matching:
    """Nearest candidate by inner products with anchors, per layer: ⟨x_l, a_l⟩ = ⟨p_l, c(a)_l⟩
    for the received anchors a and their matched candidates c(a) whatever R is."""
    x_parts, c_parts = [], []
    for layer in layers:
        x_gram = received[:, layer].astype(np.float64) @ received[anchors, layer].astype(np.float64).T
        c_gram = candidates[:, layer].astype(np.float64) @ candidates[anchor_candidates, layer].astype(np.float64).T
        scale = c_gram.std().clip(1e-12)
        x_parts.append(x_gram / scale)
        c_parts.append(c_gram / scale)
    return _nearest(np.hstack(x_parts), np.hstack(c_parts))


def invariant_match(received: np.ndarray, candidates: np.ndarray, anchors: int = 256, rounds: int = 2,
                    gram_layers: int = 8) -> Matching:
    """Per-layer norms first; then, `rounds` times, the most confident matches become anchors
    and every sample is matched again on its within-layer inner products with them."""
    matching = norm_match(received, candidates)
    layers = np.unique(np.linspace(0, received.shape[1] - 1, min(gram_layers, received.shape[1])).astype(int))
    for _ in range(rounds):
        chosen = np.argsort(-matching.margin)[:min(anchors, len(received))]
        matching = gram_match(received, candidates, chosen, matching.index[chosen], layers)
    return matching


def nearest_states(states: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Index of the nearest candidate (Euclidean over all layers) of each (L, d) state stack."""
    flat = candidates.reshape(len(candidates), -1).astype(np.float32)
    squared = (flat ** 2).sum(axis=1)
    matches = []
    for start in range(0, len(states), 256):
        block = states[start:start + 256].reshape(-1, flat.shape[1]).astype(np.float32)
        matches.append((squared[None, :] - 2 * block @ flat.T).argmin(axis=1))
    return np.concatenate(matches)


def relative_error(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per layer ‖R̂ − R‖_F / ‖R‖_F for (L, d, d) stacks (‖R‖_F = √d; 0: recovered exactly)."""
    difference = np.linalg.norm((estimate.astype(np.float64) - truth.astype(np.float64)).reshape(len(truth), -1),
                                axis=1)
    return difference / np.sqrt(truth.shape[1])
