"""The distinguishing attack and the Clopper-Pearson ε lower bound."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.distinguishing import distinguish
from secure_assist.metrics import auc_with_interval, clopper_pearson, epsilon_lower_bound, symmetric_auc


def test_clopper_pearson_known_values():
    low, high = clopper_pearson(5, 10)
    assert low == pytest.approx(0.187, abs=1e-3) and high == pytest.approx(0.813, abs=1e-3)
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0


def _gaussian_releases(sigma: float, trials: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d0, d1 = np.array([0.3, -0.3]), np.array([-0.7, 0.7])  # Δ for labels 0 and 1, ‖d0 - d1‖ = √2
    return d0 + sigma * rng.normal(size=(trials, 2)), d1 + sigma * rng.normal(size=(trials, 2))


def test_no_noise_gives_a_large_lower_bound():
    outcome = distinguish(*_gaussian_releases(1e-6, 2000, 0))
    assert epsilon_lower_bound(outcome.true_positives, outcome.positives, outcome.false_positives,
                               outcome.negatives) > 3.0


def test_calibrated_noise_stays_below_the_claimed_epsilon():
    # Analytic Gaussian: σ = 3.73·c for ε = 1, δ = 1e-5 with sensitivity c = √2.
    outcome = distinguish(*_gaussian_releases(3.73 * np.sqrt(2), 5000, 1))
    bound = epsilon_lower_bound(outcome.true_positives, outcome.positives, outcome.false_positives,
                                outcome.negatives, delta=1e-5)
    assert 0.0 <= bound <= 1.0


def test_symmetric_auc():
    labels = np.array([0, 0, 1, 1])
    assert symmetric_auc(np.array([4.0, 3.0, 2.0, 1.0]), labels) == 1.0
    report = auc_with_interval(np.array([0.1, 0.4, 0.35, 0.8] * 10), np.tile(labels, 10))
    assert report["ci95"][0] <= report["auc"] <= report["ci95"][1]


def test_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    labels, scores = rng.integers(0, 2, 300), rng.normal(size=300).round(1)
    expected = roc_auc_score(labels, scores)
    assert symmetric_auc(scores, labels) == pytest.approx(max(expected, 1 - expected))
