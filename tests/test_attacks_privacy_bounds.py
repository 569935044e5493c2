"""The distinguishing attack, the Clopper-Pearson ε lower bound and the Gaussian-DP μ."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.distinguishing import MeanDifferenceTest
from secure_assist.audit.dp_bounds import gdp_epsilon, gdp_mu, held_out_bounds
from secure_assist.mechanisms.accounting import analytic_gaussian_sigma
from secure_assist.metrics import (
    auc_with_interval, clopper_pearson, epsilon_lower_bound, low_fpr_metrics, symmetric_auc, tpr_at_fpr,
)


def test_clopper_pearson_known_values():
    low, high = clopper_pearson(5, 10)
    assert low == pytest.approx(0.187, abs=1e-3) and high == pytest.approx(0.813, abs=1e-3)
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
    # Elementwise over arrays, the same values as one count at a time.
    lows, highs = clopper_pearson(np.array([0, 5, 10]), 10)
    assert lows.tolist() == [clopper_pearson(k, 10)[0] for k in (0, 5, 10)]
    assert highs.tolist() == [clopper_pearson(k, 10)[1] for k in (0, 5, 10)]


def _gaussian_releases(sigma: float, trials: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d0, d1 = np.array([0.3, -0.3]), np.array([-0.7, 0.7])  # Δ for labels 0 and 1, ‖d0 - d1‖ = √2
    return d0 + sigma * rng.normal(size=(trials, 2)), d1 + sigma * rng.normal(size=(trials, 2))


def _held_out(outputs_0: np.ndarray, outputs_1: np.ndarray, delta: float) -> dict:
    """The DP check's bounds: the test fitted on the first 100 releases of each input."""
    test = MeanDifferenceTest(outputs_0[:100], outputs_1[:100])
    return held_out_bounds(test.scores(outputs_0), test.scores(outputs_1), delta)


def _perfect_test_bound(n: int, delta: float = 0.0, confidence: float = 0.95) -> float:
    """The bound of a test that is always right on n releases of each input, in closed form:
    Clopper-Pearson gives TPR >= (α/2)^(1/n) for n/n and FPR <= 1 - (α/2)^(1/n) for 0/n."""
    tail = ((1 - confidence) / 2) ** (1 / n)
    return float(np.log((tail - delta) / (1 - tail)))


def test_no_noise_gives_the_largest_bound_its_sample_size_allows():
    releases = _gaussian_releases(1e-6, 2000, 0)
    # ln((0.025^(1/1000)) / (1 - 0.025^(1/1000))) = 5.60: the bound is exactly this, to float precision.
    for delta in (0.0, 1e-5):
        outcome = _held_out(*releases, delta)
        assert (outcome["true_positives"], outcome["false_positives"]) == (outcome["positives"], 0) == (1000, 0)
        assert outcome["empirical_epsilon_lower_bound"] == pytest.approx(_perfect_test_bound(1000, delta), rel=1e-9)
    assert _perfect_test_bound(1000) == pytest.approx(5.60, abs=0.005)


def test_lower_bound_on_known_counts_matches_the_definition():
    # TPR 600/1000, FPR 100/1000: the binding constraint is TPR <= e^ε FPR + δ, so the bound is
    # ln((TPR_low - δ) / FPR_high) with the Clopper-Pearson ends (computed here from scipy's beta).
    from scipy.stats import beta

    tpr_low, fpr_high = beta.ppf(0.025, 600, 401), beta.ppf(0.975, 101, 900)
    for delta in (0.0, 0.01):
        expected = np.log((tpr_low - delta) / fpr_high)
        assert epsilon_lower_bound(600, 1000, 100, 1000, delta=delta) == pytest.approx(expected, rel=1e-9)
    # The other direction (1 - FPR <= e^ε (1 - TPR) + δ) binds for a test that rarely misses D1:
    # TPR 990/1000, FPR 400/1000 give ln(0.57 / 0.018) = 3.4 there against ln(0.98 / 0.43) = 0.8.
    tpr_low, fpr_high = beta.ppf(0.025, 990, 11), beta.ppf(0.975, 401, 600)
    expected = np.log((1 - fpr_high) / (1 - tpr_low))
    assert expected > np.log(tpr_low / fpr_high) + 2
    assert epsilon_lower_bound(990, 1000, 400, 1000) == pytest.approx(expected, rel=1e-9)


def test_calibrated_noise_stays_below_the_claimed_epsilon():
    # Analytic Gaussian: σ = 3.73·c for ε = 1, δ = 1e-5 with sensitivity c = √2.
    outcome = _held_out(*_gaussian_releases(3.73 * np.sqrt(2), 5000, 1), delta=1e-5)
    assert 0.0 <= outcome["empirical_epsilon_lower_bound"] <= 1.0
    assert outcome["gdp_mu_lower_bound"] <= outcome["gdp_mu"]


def test_gdp_mu_of_a_gaussian_shift_and_its_epsilon_equivalent():
    # Any threshold on N(0, 1) against N(μ, 1) has Φ⁻¹(TPR) - Φ⁻¹(FPR) = μ.
    from scipy.stats import norm

    for threshold in (-1.0, 0.3, 2.5):
        assert gdp_mu(norm.sf(threshold - 0.8), norm.sf(threshold)) == pytest.approx(0.8, rel=1e-9)
    # The analytic Gaussian at ε = 4, δ = 1e-5 and sensitivity 2 is μ = 2/σ GDP; its ε equivalent is 4 again.
    mu = 2 / analytic_gaussian_sigma(4.0, 1e-5, 2.0)
    assert gdp_epsilon(mu, 1e-5) == pytest.approx(4.0, rel=1e-6)
    assert gdp_epsilon(0.0, 1e-5) == 0.0


def test_held_out_bounds_estimate_mu_and_choose_the_threshold_on_the_first_half():
    rng = np.random.default_rng(5)
    scores_0, scores_1 = rng.normal(size=40_000), rng.normal(size=40_000) + 1.0
    outcome = held_out_bounds(scores_0, scores_1, delta=1e-5)
    assert outcome["positives"] == outcome["negatives"] == 20_000
    assert outcome["gdp_mu"] == pytest.approx(1.0, abs=0.05)
    assert 0 < outcome["empirical_epsilon_lower_bound"] < gdp_epsilon(1.0, 1e-5)
    # The evaluating half alone decides the counts: a perfect second half certifies what 20,000 releases allow.
    scores_1[20_000:] = 100.0
    perfect = held_out_bounds(scores_0, scores_1, delta=0.0)
    assert perfect["true_positives"] == 20_000 and perfect["tpr"] == 1.0


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


def test_tpr_at_fpr_counts_only_thresholds_within_the_rate() -> None:
    # 1,000 negatives at 0..999, positives: 5 above every negative, 5 tied with the top negative.
    negatives = np.arange(1000, dtype=float)
    positives = np.array([2000.0] * 5 + [999.0] * 5)
    scores = np.concatenate([negatives, positives])
    labels = np.concatenate([np.zeros(1000, int), np.ones(10, int)])
    assert tpr_at_fpr(scores, labels, 0.0) == pytest.approx(0.5)  # ties with a negative cannot pass at FPR 0
    assert tpr_at_fpr(scores, labels, 0.001) == pytest.approx(1.0)  # one negative may pass: the ties do too
    report = low_fpr_metrics(scores, labels, fprs=(0.01, 0.0001))
    assert report["tpr_at_0.01_fpr"] == pytest.approx(1.0)
    assert report["tpr_at_0.0001_fpr"] is None  # 1,000 negatives cannot resolve a rate of 1 in 10,000
    assert np.isnan(tpr_at_fpr(scores[:1000], labels[:1000], 0.01))
