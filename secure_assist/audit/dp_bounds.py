"""Pure maths of the DP check: the operating point of a distinguishing test and its bounds.

A test statistic is computed for every release of two neighbouring inputs. The releases
are split in two halves: the threshold is chosen on the first (the one maximising the
bound that half would certify), and the second half is scored once at that threshold,
so the reported counts carry no selection bias and Clopper-Pearson applies as stated.
Two bounds are reported:
- the (ε, δ) lower bound from the Clopper-Pearson ends of TPR and FPR (valid for any
  mechanism: it is the one compared with the claim);
- a Gaussian-DP μ (Dong, Roth & Su 2019): a μ-GDP mechanism has TPR <= Φ(Φ⁻¹(FPR) + μ),
  so Φ⁻¹(TPR) - Φ⁻¹(FPR) estimates μ, with its ε equivalent at the claim's δ. It is
  tight for Gaussian noise, where it certifies far more of a claim than a single
  (TPR, FPR) point can, but a mechanism that is not Gaussian (randomized response) can
  exceed it while keeping its ε claim, so it is reported, not compared.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from scipy.stats import norm

from secure_assist.mechanisms.accounting import analytic_gaussian_epsilon
from secure_assist.metrics import clopper_pearson, epsilon_lower_bound

# A bound's optimum sits where a few releases of one input pass the threshold (every such score is
# tried); elsewhere the bound moves smoothly with the threshold, so a quantile grid finds it.
TAIL_CANDIDATES, GRID_CANDIDATES = 500, 2000
# The Clopper-Pearson confidence of the bound that picks the threshold on the fitting half (see below).
SELECTION_CONFIDENCE = 0.999
# (true positives, positives, false positives, negatives) -> value to maximise, elementwise.
Objective = Callable[[np.ndarray, int, np.ndarray, int], np.ndarray]


def counts_above(sorted_0: np.ndarray, sorted_1: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(releases of D1, releases of D0) scoring strictly above each threshold, from sorted scores."""
    def above(scores: np.ndarray) -> np.ndarray:
        return len(scores) - np.searchsorted(scores, thresholds, side="right")
    return above(sorted_1), above(sorted_0)


def candidate_thresholds(sorted_0: np.ndarray, sorted_1: np.ndarray) -> np.ndarray:
    """Every score in the two tails where a large privacy loss shows (D0's highest, D1's lowest
    TAIL_CANDIDATES), and a grid of GRID_CANDIDATES quantiles of all scores in between."""
    tail = min(TAIL_CANDIDATES, len(sorted_0), len(sorted_1))
    pooled = np.sort(np.concatenate([sorted_0, sorted_1]))
    grid = pooled[np.linspace(0, len(pooled) - 1, GRID_CANDIDATES).round().astype(int)]
    return np.unique(np.concatenate([sorted_0[-tail:], sorted_1[:tail], grid]))


def best_threshold(sorted_0: np.ndarray, sorted_1: np.ndarray, objective: Objective) -> float:
    """The candidate threshold maximising `objective` on these releases (scores sorted)."""
    thresholds = candidate_thresholds(sorted_0, sorted_1)
    true_positives, false_positives = counts_above(sorted_0, sorted_1, thresholds)
    values = np.nan_to_num(objective(true_positives, len(sorted_1), false_positives, len(sorted_0)), nan=-np.inf)
    # The best candidates form runs of equal counts (perfectly separated halves: every threshold in the gap);
    # the middle of the first run, between its lowest score and the next candidate above it, leaves the
    # other half's releases the widest margin on both sides.
    first = int(np.argmax(values))
    last = first
    while last + 1 < len(values) and values[last + 1] == values[first]:
        last += 1
    return float((thresholds[first] + thresholds[min(last + 1, len(thresholds) - 1)]) / 2)


def gdp_mu(tpr: Any, fpr: Any) -> Any:
    """μ of the Gaussian trade-off curve through (FPR, TPR): Φ⁻¹(TPR) - Φ⁻¹(FPR)."""
    return norm.ppf(tpr) - norm.ppf(fpr)


def gdp_mu_lower_bound(true_positives: Any, positives: Any, false_positives: Any, negatives: Any) -> Any:
    """μ through the Clopper-Pearson ends that make the test look weakest (TPR low, FPR high)."""
    tpr_low, _ = clopper_pearson(true_positives, positives)
    _, fpr_high = clopper_pearson(false_positives, negatives)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(gdp_mu(tpr_low, fpr_high), nan=-np.inf)


def gdp_epsilon(mu: float, delta: float) -> float | None:
    """The ε at δ of a μ-GDP mechanism (a Gaussian release of sensitivity 1 and noise 1/μ); 0 for μ <= 0,
    None at δ = 0 (a μ-GDP mechanism with μ > 0 is never pure ε-DP: label_rr's claims have δ = 0)."""
    if not mu > 0:
        return 0.0
    if delta == 0:
        return None
    return analytic_gaussian_epsilon(1.0 / mu, delta)


def _epsilon_objective(delta: float) -> Objective:
    # A stricter confidence than the reported one steers the choice away from the extreme tail, where a
    # few lucky releases of the fitting half make a threshold look better than it is on the other half.
    return lambda tp, pos, fp, neg: epsilon_lower_bound(tp, pos, fp, neg, delta=delta, confidence=SELECTION_CONFIDENCE)


def held_out_bounds(scores_0: np.ndarray, scores_1: np.ndarray, delta: float) -> dict[str, float | int]:
    """Both bounds of a test statistic, thresholds chosen on the first half of each input's
    releases and evaluated once on the second half."""
    half_0, half_1 = len(scores_0) // 2, len(scores_1) // 2
    fit_0, fit_1 = np.sort(scores_0[:half_0]), np.sort(scores_1[:half_1])
    test_0, test_1 = np.sort(scores_0[half_0:]), np.sort(scores_1[half_1:])
    positives, negatives = len(test_1), len(test_0)

    def evaluate(threshold: float) -> tuple[int, int]:
        true_positives, false_positives = counts_above(test_0, test_1, np.array([threshold]))
        return int(true_positives[0]), int(false_positives[0])

    tp, fp = evaluate(best_threshold(fit_0, fit_1, _epsilon_objective(delta)))
    gdp_tp, gdp_fp = evaluate(best_threshold(fit_0, fit_1, gdp_mu_lower_bound))
    mu_low = float(max(0.0, gdp_mu_lower_bound(gdp_tp, positives, gdp_fp, negatives)))
    # The point estimate at an empty or full cell would be infinite: half a release keeps it finite.
    mu = float(max(0.0, gdp_mu(np.clip(gdp_tp, 0.5, positives - 0.5) / positives,
                               np.clip(gdp_fp, 0.5, negatives - 0.5) / negatives)))
    return {"positives": positives, "negatives": negatives, "true_positives": tp, "false_positives": fp,
            "tpr": tp / positives, "fpr": fp / negatives,
            "empirical_epsilon_lower_bound": float(epsilon_lower_bound(tp, positives, fp, negatives, delta=delta)),
            "gdp_tpr": gdp_tp / positives, "gdp_fpr": gdp_fp / negatives,
            "gdp_mu": mu, "gdp_mu_lower_bound": mu_low,
            "gdp_epsilon": gdp_epsilon(mu, delta), "gdp_epsilon_lower_bound": gdp_epsilon(mu_low, delta)}
