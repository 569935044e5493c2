"""The safeguard's honesty and power, by simulation: side outputs no better than the backbone are deployed in at
most 5% of trials, while choosing the factor and testing it on the same samples (the earlier design) is not held
to that; a side output that is clearly better is deployed. The same two checks for generation's correction scale.
Then in real (tiny-model) runs: every run is safeguarded by default, unprotected included; `safeguard_fraction` 0
turns it off; a device too small to show a gain deploys its backbone and says why."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from secure_assist.config import FinetuneConfig
from secure_assist.finetune import run_finetune
from secure_assist.training.safeguard import (MIN_VALIDATION, NO_VALIDATION, SCALE_GRID, SHRINK_GRID, choose_scale,
                                              choose_shrink, paired_lower, validation_count)

TRIALS = 400
VALIDATION = 200


def _backbone(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_b, labels, margin): a backbone right on ~80% of samples, with a spread of confidence."""
    labels = rng.integers(0, 2, n)
    margin = rng.normal(1.2, 1.5, n)  # logit of the true class minus the other's
    logits = np.zeros((n, 2))
    logits[np.arange(n), labels] = margin
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, labels, margin


def _noise(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A side output of pure noise (e.g. a DP-noised head that learned nothing), at a random scale."""
    probs, labels, _ = _backbone(rng, n)
    side = rng.normal(0.0, rng.choice([0.05, 0.2, 1.0]), (n, 2))
    return probs, labels, side - side.mean(axis=1, keepdims=True)


def _trade(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A side output that pushes toward the truth exactly as often as away from it, strongest where the backbone
    is least sure: every shrink factor is, in expectation, no better than the backbone."""
    probs, labels, _ = _backbone(rng, n)
    toward = np.where(rng.random(n) < 0.5, 1.0, -1.0) * rng.exponential(0.3, n)
    side = np.zeros((n, 2))
    side[np.arange(n), labels] = toward / 2
    side[np.arange(n), 1 - labels] = -toward / 2
    return probs, labels, side


def _calibration(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A side output that only tempers an overconfident backbone (pulls p_b toward uniform): a lower Brier score at
    every factor, the same predictions."""
    probs, labels, _ = _backbone(rng, n)
    sharp = probs ** 3 / (probs ** 3).sum(axis=1, keepdims=True)  # the backbone's own, overconfident
    return sharp, labels, probs - sharp


def _same_sample_deploys(probs: np.ndarray, side: np.ndarray, labels: np.ndarray) -> bool:
    """Without cross-fitting: the best factor on the split, tested on the same split."""
    truth = np.eye(2)[labels]
    brier = [((probs + s * side - truth) ** 2).sum(axis=1) for s in SHRINK_GRID]
    best = int(np.argmin([b.mean() for b in brier]))
    return best > 0 and paired_lower(brier[best], brier[0]) <= 0.05


# 10: the fewest validation samples a run holds out (`MIN_VALIDATION`), a small device's split.
@pytest.mark.parametrize("validation", [MIN_VALIDATION, VALIDATION])
@pytest.mark.parametrize("scenario", [_noise, _trade, _calibration], ids=["noise", "trade", "calibration"])
def test_a_side_output_no_better_than_the_backbone_is_rarely_deployed(scenario, validation: int) -> None:
    rng = np.random.default_rng(1)
    deployed = same_sample = 0
    for trial in range(TRIALS):
        probs, labels, side = scenario(rng, validation)
        deployed += choose_shrink(probs, side, labels, seed=trial).factor > 0
        same_sample += _same_sample_deploys(probs, side, labels)
    assert deployed / TRIALS <= 0.05, deployed
    # Exact binomial: the cross-fitted rate is not above 5% at 95% confidence either.
    assert binomtest(deployed, TRIALS, 0.05, alternative="greater").pvalue > 0.05
    assert same_sample >= deployed  # selecting on the test samples only ever looks better


def test_a_clearly_better_side_output_is_deployed() -> None:
    rng = np.random.default_rng(2)
    deployed = 0
    for trial in range(50):
        probs, labels, _ = _backbone(rng, VALIDATION)
        fixes = rng.random(VALIDATION) < 0.5  # half the samples get a push toward the truth
        side = np.zeros((VALIDATION, 2))
        side[np.arange(VALIDATION), labels] = np.where(fixes, 0.4, 0.0)
        decision = choose_shrink(probs, side, labels, seed=trial)
        deployed += decision.factor > 0
        assert decision.validation_accuracy_chosen >= decision.validation_accuracy_backbone
    assert deployed >= 45


def _scaled_correction(rng: np.random.Generator, n: int, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """(sample_nll over SCALE_GRID, counts): each sample's summed answer NLL moves linearly with the factor, by a
    slope drawn around -gain (0: the correction helps as many samples as it hurts, with no penalty for large
    factors, the case where picking the best of the grid flatters it most), plus a curvature that gives a real
    correction a best factor inside the grid."""
    counts = rng.integers(5, 60, n)
    base = rng.gamma(2.0, 1.0, n) * counts
    slope = rng.normal(-gain, 1.0, n)
    scale = np.array(SCALE_GRID) / max(SCALE_GRID)
    return base[:, None] + 0.1 * counts[:, None] * (scale * slope[:, None] + gain / 2 * scale ** 2), counts


@pytest.mark.parametrize("validation", [30, 200])
def test_a_generation_correction_no_better_than_the_backbone_is_rarely_deployed(validation: int) -> None:
    rng = np.random.default_rng(3)
    deployed = sum(choose_scale(*_scaled_correction(rng, validation, 0.0)).factor > 0 for _ in range(TRIALS))
    assert binomtest(deployed, TRIALS, 0.05, alternative="greater").pvalue > 0.05, deployed


def test_a_clearly_better_generation_correction_is_deployed_at_a_factor_that_lowers_the_nll() -> None:
    rng = np.random.default_rng(4)
    decisions = [choose_scale(*_scaled_correction(rng, 60, 1.0)) for _ in range(50)]
    assert sum(d.factor > 0 for d in decisions) >= 45
    assert all(d.validation_nll_chosen <= d.validation_nll_backbone for d in decisions)


def test_the_validation_split_holds_the_share_at_least_the_floor_and_at_most_half() -> None:
    assert validation_count(2000, 0.2) == 400 and validation_count(100, 0.3) == 30  # the share
    assert validation_count(20, 0.2) == MIN_VALIDATION == 10 and validation_count(50, 0.1) == 10  # the floor
    assert validation_count(5, 0.2) == 2 and validation_count(2, 0.2) == 1  # at most half: the rest trains
    assert validation_count(1, 0.2) == 0  # a device of one sample holds none out (and deploys its backbone)
    assert validation_count(2000, 0.0) == 0  # the safeguard is off


TINY = dict(model="tiny-llama", eval_samples=8, epochs=2, rank=4, mechanism_seed=0)


def test_an_unprotected_run_is_safeguarded_unless_turned_off(tmp_path) -> None:
    config = FinetuneConfig(train_samples=40, workdir=str(tmp_path / "on"), **TINY)
    assert config.mechanism == ("none",) and config.safeguard_fraction is None  # the defaults
    guarded = run_finetune(config, progress=False)
    decision = guarded.safeguard
    assert guarded.n_train == 30 and decision["validation_samples"] == MIN_VALIDATION
    assert decision["action"] in ("kept", "shrunk", "dropped") and decision["reason"].startswith(decision["action"])
    unguarded = run_finetune(FinetuneConfig(train_samples=40, safeguard_fraction=0.0, workdir=str(tmp_path / "off"),
                                            **TINY), progress=False)
    assert unguarded.safeguard is None and unguarded.n_train == 40


@pytest.mark.parametrize("device_index", [0, 3])
def test_a_tiny_device_deploys_its_backbone_and_says_why(tmp_path, device_index: int) -> None:
    # 40 samples over 8 devices: 5 each, 2 of them held out; over 40 devices: 1 each, none to hold out.
    devices = 8 if device_index else 40
    summary = run_finetune(FinetuneConfig(train_samples=40, devices=devices, device_index=device_index,
                                          workdir=str(tmp_path / "run"), **TINY), progress=False)
    decision = summary.safeguard
    assert decision["action"] == "dropped" and decision["factor"] == 0.0
    assert summary.metrics["accuracy"] == summary.metrics["zero_shot_accuracy"]  # the backbone, deployed
    if devices == 8:
        assert summary.n_train == 3 and decision["validation_samples"] == 2
        assert decision["reason"].startswith("dropped: the cross-fitted")
    else:
        assert summary.n_train == 1 and decision == {"factor": 0.0, "validation_samples": 0, "p_value": 1.0,
                                                     "action": "dropped", "reason": NO_VALIDATION}


def test_a_side_output_without_validation_is_zeroed_not_only_labelled_dropped() -> None:
    import torch

    from protocol.model.side_network import AdditiveSideNetwork, SideNetworkShape
    from secure_assist.training.safeguard import drop_unvalidated

    side = AdditiveSideNetwork(SideNetworkShape(n_layers=2, hidden_size=8, rank=2, n_classes=2),
                               generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for parameter in side.parameters():
            parameter.normal_(generator=torch.Generator().manual_seed(1))
    inputs = torch.randn(4, 2, 8, generator=torch.Generator().manual_seed(2))
    assert side(inputs).abs().max() > 0
    assert drop_unvalidated(side)["action"] == "dropped"
    assert torch.allclose(side(inputs), torch.zeros(4, 2), atol=1e-6)
