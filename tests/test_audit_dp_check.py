"""The audit's DP check (`secure_assist.audit.dp_check`) on real releases of tiny-llama's Δ: it
catches a Gaussian mechanism that adds the noise of twice its claimed ε, never flags a correct
one, and certifies most of a randomized-response claim (whose optimal test is exact)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocol.data.tasks import SST2, builtin_split, sample
from protocol.errors import UserInputError
from protocol.device.forward_device import DeviceRole
from secure_assist.audit.dp_check import Release, classification_releases, empirical_epsilon, releases_for
from secure_assist.mechanism_parameters import LabelRRParameters
from secure_assist.mechanisms.activations import ActivationNoise
from secure_assist.mechanisms.accounting import analytic_gaussian_sigma, randomized_response_keep_probability
from secure_assist.mechanisms.base import clip_rows
from secure_assist.mechanisms.delta import GaussianDelta, GaussianParameters, LabelRandomizedResponse

# ε = 1 with a clip below tiny-llama's Δ norms (~0.7), so the farthest pair's clipped Δ are antipodal on
# the clip sphere: the pair reaches the claim's full sensitivity 2c.
CLAIM = GaussianParameters(epsilon=1.0, clip=0.5)
# Half a million releases per input: the under-noised mechanism's bound (true ε = 2) then averages 1.42
# with a standard deviation of 0.085 over seeds (simulated: 20 seeds of N(0, 1) against N(μ, 1)), 4.9
# deviations above the claim; the correct one's stays near 0.7, where the claim at δ = 1e-5 is out of reach.
RELEASES = 500_000
SEEDS = range(20)


class UnderNoised(GaussianDelta):
    """A broken Gaussian mechanism: it claims the ε of its parameters but adds the noise calibrated
    for twice that ε."""

    def __init__(self, parameters: GaussianParameters, rng: np.random.Generator) -> None:
        super().__init__(parameters, rng)
        self.noise_multiplier = analytic_gaussian_sigma(2 * self.epsilon, parameters.dp_delta, self.sensitivity)


@pytest.fixture(scope="module")
def device(tiny_llama) -> DeviceRole:
    return DeviceRole(tiny_llama, SST2, progress=False)


@pytest.fixture(scope="module")
def texts() -> list:
    return sample(builtin_split("sst2", "dev"), 32, 0)


@pytest.fixture(scope="module")
def gaussian_pair(device, texts) -> tuple[Release, Release]:
    return classification_releases(device, GaussianDelta, texts, RELEASES)


def test_the_gaussian_pair_reaches_the_claimed_sensitivity(gaussian_pair) -> None:
    (first, _, _), (second, _, _) = gaussian_pair
    clipped = [clip_rows(u.delta[:1].astype(np.float64), CLAIM.clip) for u in (first, second)]
    assert np.linalg.norm(clipped[0] - clipped[1]) == pytest.approx(GaussianDelta.sensitivity * CLAIM.clip, rel=1e-3)


def test_under_noised_gaussian_is_flagged_and_a_correct_one_never_is(gaussian_pair) -> None:
    under = [empirical_epsilon(UnderNoised, CLAIM, gaussian_pair, RELEASES, seed) for seed in SEEDS]
    correct = [empirical_epsilon(GaussianDelta, CLAIM, gaussian_pair, RELEASES, seed) for seed in SEEDS]
    assert all(r["claimed_epsilon"] == pytest.approx(1.0, rel=1e-6) for r in under + correct)
    assert sum(not r["consistent"] for r in under) >= 19
    assert all(r["consistent"] for r in correct)
    # The Gaussian-DP μ of each matches the noise it adds (μ = 2c / σc), within a few percent.
    for results, epsilon in ((under, 2.0), (correct, 1.0)):
        mu = 2 / analytic_gaussian_sigma(epsilon, CLAIM.dp_delta, 2.0)
        assert np.median([r["gdp_mu"] for r in results]) == pytest.approx(mu, rel=0.05)
        assert all(r["gdp_mu_lower_bound"] <= r["gdp_mu"] for r in results)
        assert np.median([r["gdp_epsilon"] for r in results]) == pytest.approx(epsilon, rel=0.1)


def test_the_check_of_a_claim_over_rounds_tests_every_round_release(gaussian_pair) -> None:
    # Four boosting rounds: each round's noise is twice the one-release σ, and the claim covers the four releases
    # together. The check sees all four (their mean), so it measures the μ of one release at the claimed ε; one
    # round alone would show half of it.
    rounds = GaussianParameters(epsilon=1.0, clip=0.5, rounds=4)
    results = [empirical_epsilon(GaussianDelta, rounds, gaussian_pair, RELEASES, seed) for seed in range(3)]
    mu = 2 / analytic_gaussian_sigma(1.0, CLAIM.dp_delta, 2.0)
    assert all(r["rounds_per_release"] == 4 and r["consistent"] for r in results)
    assert all(r["claimed_epsilon"] == pytest.approx(1.0, rel=1e-6) for r in results)
    assert np.median([r["gdp_mu"] for r in results]) == pytest.approx(mu, rel=0.05)


def test_randomized_response_is_certified_near_its_claim(device, texts) -> None:
    # The exact test's TPR/FPR are q and 1 - q, whose ratio is e^ε; 100,000 held-out releases of
    # each label pin FPR = 0.018 to about ±4%, which puts the Clopper-Pearson bound near 3.95 of ε = 4.
    releases = 200_000
    pair = classification_releases(device, LabelRandomizedResponse, texts, releases)
    (first, _, _), (second, _, _) = pair
    assert first.activations.tobytes() == second.activations.tobytes()  # label-DP: the same input
    result = empirical_epsilon(LabelRandomizedResponse, LabelRRParameters(epsilon=4.0), pair, releases, seed=0)
    q = randomized_response_keep_probability(4.0, 2)
    assert result["tpr"] == pytest.approx(q, abs=0.003) and result["fpr"] == pytest.approx(1 - q, abs=0.003)
    assert 0.9 * 4.0 <= result["empirical_epsilon_lower_bound"] <= 4.0 and result["consistent"]


def test_the_bound_is_evaluated_on_half_of_the_releases(gaussian_pair) -> None:
    # Which half chose the threshold is checked on the bounds themselves (tests/test_attacks_privacy_bounds.py).
    result = empirical_epsilon(GaussianDelta, CLAIM, gaussian_pair, 2000, seed=0)
    assert result["positives"] == result["negatives"] == 1000
    assert math.isfinite(result["empirical_epsilon_lower_bound"])


def test_too_few_releases_is_a_user_error(device, texts) -> None:
    with pytest.raises(UserInputError, match="at least 2 releases"):
        classification_releases(device, GaussianDelta, texts, 1)


def test_release_counts_default_by_what_a_release_costs() -> None:
    # A release of Δ is C values; one of the activations draws a noise value per coordinate of every layer.
    assert releases_for(GaussianDelta, None) == releases_for(LabelRandomizedResponse, None) == 200_000
    assert releases_for(ActivationNoise, None) == 2_000
    assert releases_for(ActivationNoise, 50_000) == 50_000
