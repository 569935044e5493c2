"""A distinguishing attack on a protected channel, for empirical DP lower bounds.

Given many releases of the mechanism on two neighbouring inputs (outputs_0 for input
D0, outputs_1 for D1), the attacker learns a linear test statistic and a threshold on
one half of the trials and is scored on the other half, so the reported TPR/FPR are
unbiased. The auditor turns them into an ε lower bound with Clopper-Pearson intervals.
It decides from the mechanism's outputs only (it may have used public activations to
choose the neighbouring inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_TAIL = 50


@dataclass(frozen=True)
class DistinguishingOutcome:
    """Counts on the held-out half: 'positive' means the release came from D1."""

    true_positives: int
    positives: int
    false_positives: int
    negatives: int


def distinguish(outputs_0: np.ndarray, outputs_1: np.ndarray, seed: int = 0) -> DistinguishingOutcome:
    """Threshold test on the projection onto the mean difference of the two inputs' releases."""
    rng = np.random.default_rng(seed)
    a = rng.permutation(np.asarray(outputs_0, dtype=np.float64).reshape(len(outputs_0), -1))
    b = rng.permutation(np.asarray(outputs_1, dtype=np.float64).reshape(len(outputs_1), -1))
    half_a, half_b = len(a) // 2, len(b) // 2
    direction = b[:half_b].mean(axis=0) - a[:half_a].mean(axis=0)
    fit_0, fit_1 = a[:half_a] @ direction, b[:half_b] @ direction
    threshold = _best_threshold(fit_0, fit_1)
    test_0, test_1 = a[half_a:] @ direction, b[half_b:] @ direction
    return DistinguishingOutcome(true_positives=int((test_1 > threshold).sum()), positives=len(test_1),
                                 false_positives=int((test_0 > threshold).sum()), negatives=len(test_0))


def _best_threshold(scores_0: np.ndarray, scores_1: np.ndarray) -> float:
    """The threshold whose likelihood ratio of TPR over FPR (smoothed) is largest.

    A high-threshold test is what exposes a large privacy loss, so the ratio (not
    accuracy) is optimised; +1 smoothing keeps tiny tails from looking infinite.
    """
    candidates = np.unique(np.concatenate([scores_0, scores_1]))
    best, best_ratio = float(candidates[0]), -np.inf
    for threshold in candidates[:: max(1, len(candidates) // 400)]:
        tpr = ((scores_1 > threshold).sum() + 1) / (len(scores_1) + 2)
        fpr = ((scores_0 > threshold).sum() + 1) / (len(scores_0) + 2)
        ratio = max(np.log(tpr / fpr), np.log((1 - fpr) / (1 - tpr)))
        # Tails of fewer than MIN_TAIL releases are noise on the fitting half, not evidence.
        tails = min((scores_1 > threshold).sum(), (scores_0 <= threshold).sum())
        if ratio > best_ratio and tails >= MIN_TAIL:
            best, best_ratio = float(threshold), ratio
    return best
