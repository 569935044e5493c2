"""DP, masking and activation mechanisms: accounting against independent computations,
noise scale, flip rate, determinism, exact unmasking, bad configurations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm

from protocol.errors import UserInputError
from protocol.wire.messages import Upload
from protocol.model.side_network import AdditiveSideNetwork, SideNetworkShape
from secure_assist.mechanisms import MECHANISMS, MechanismChain, PrivacyWarning
from secure_assist.mechanisms.accounting import (
    analytic_gaussian_epsilon,
    analytic_gaussian_sigma,
    randomized_response_epsilon,
    rdp_gaussian_epsilon,
)
from secure_assist.mechanisms.activations import quantize_int8
from secure_assist.mechanisms.base import CLASSIFICATION_KIND
from secure_assist.mechanisms.delta import RotationMask
from protocol.modes.registry import MODES
from secure_assist.training.safeguard import choose_shrink, shrink_network

N, L, D, C = 64, 3, 8, 2
SETTINGS = {"none": {}, "gaussian": {"epsilon": 2.0}, "label_rr": {"epsilon": 1.0}, "rotation_mask": {},
            "activation_noise": {"activation_noise_multiplier": 0.5},
            "int8_activations": {}, "activation_rotation": {}, "he_ckks": {"ckks_poly_modulus_degree": 4096,
                                                "ckks_coeff_mod_bit_sizes": (40, 20, 40), "ckks_scale_bits": 20},
            "gaussian_r": {"epsilon": 2.0}}
# Mechanisms of classification uploads (the generation ones are tested in test_generation_mechanisms).
CLASSIFICATION = sorted(name for name, cls in MECHANISMS.items() if CLASSIFICATION_KIND in cls.task_kinds)


def make_batch(seed: int = 0, n: int = N) -> tuple[Upload, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, C)).astype(np.float32)
    labels = rng.integers(0, C, n)
    probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
    delta = (np.eye(C)[labels] - probs).astype(np.float32)
    upload = Upload(sample_ids=rng.integers(0, 256, (n, 16), dtype=np.uint8),
                    activations=rng.normal(size=(n, L, D)).astype(np.float16), delta=delta, layers=(1, 2, 3))
    return upload, labels, logits


def privacy_profile_numeric(epsilon: float, sigma: float, sensitivity: float) -> float:
    """δ(ε) = ∫ max(0, p(x) - e^ε q(x)) dx for N(s, σ²) vs N(0, σ²), by quadrature."""
    x = np.linspace(-40 * sigma, 40 * sigma + sensitivity, 2_000_001)
    gap = np.maximum(0.0, norm.pdf(x, sensitivity, sigma) - math.exp(epsilon) * norm.pdf(x, 0, sigma))
    return float(np.trapezoid(gap, x))


def test_registry_covers_every_mechanism_setting() -> None:
    assert set(SETTINGS) == set(MECHANISMS)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_shapes_and_determinism_under_a_seed(name: str) -> None:
    upload, labels, logits = make_batch()
    outs = []
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PrivacyWarning)
            chain = MechanismChain([name], SETTINGS[name], seed=7)
        outs.append(chain.transform(upload, labels, logits) + chain.flush())
    if name == "he_ckks":  # encryption is randomized by SEAL; compare sizes and cleartext parts
        assert outs[0][0].activations.shape == (N, L, D) and len(outs[0][0].ciphertext_sizes) == C
        return
    first, second = outs[0][0], outs[1][0]
    assert first.delta.shape == (N, C) and first.activations.shape == (N, L, D)
    assert first.activations.dtype == np.float16 and first.delta.dtype == np.float32
    np.testing.assert_array_equal(first.delta, second.delta)
    np.testing.assert_array_equal(first.activations, second.activations)


def test_none_warns_when_it_sends_not_when_it_is_built() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chain = MechanismChain(["none"])  # building a chain only validates: no warning, no keys
    upload, labels, logits = make_batch()
    with pytest.warns(PrivacyWarning):
        chain.transform(upload, labels, logits)


def test_analytic_gaussian_matches_design_and_numeric_profile() -> None:
    sigma = analytic_gaussian_sigma(1.0, 1e-5)
    assert sigma == pytest.approx(3.73, abs=0.005)
    assert privacy_profile_numeric(1.0, sigma, 1.0) == pytest.approx(1e-5, rel=1e-3)
    for eps in (0.5, 2.0, 8.0):
        s = analytic_gaussian_sigma(eps, 1e-5, 2.0)
        assert privacy_profile_numeric(eps, s, 2.0) == pytest.approx(1e-5, rel=1e-3)
        assert analytic_gaussian_epsilon(s, 1e-5, 2.0) == pytest.approx(eps, rel=1e-6)


def test_opacus_rdp_is_the_looser_cross_check() -> None:
    epsilon, _ = rdp_gaussian_epsilon(3.73, 1e-5)
    assert epsilon == pytest.approx(1.09, abs=0.01)
    assert epsilon > analytic_gaussian_epsilon(3.73, 1e-5)


def test_gaussian_noise_scale_statistically() -> None:
    n = 20_000
    upload, labels, logits = make_batch(1, n)
    chain = MechanismChain(["gaussian"], {"noise_multiplier": 2.0, "clip": 0.5}, seed=3)
    noisy = chain.transform(upload, labels, logits)[0].delta
    clipped = upload.delta * np.minimum(1, 0.5 / np.linalg.norm(upload.delta, axis=1, keepdims=True))
    residual = (noisy - clipped).ravel()
    # std of n·C normal draws: 99.9% interval of the sample std is about ±3.3·σ/√(2·nC).
    expected = 2.0 * 0.5
    assert abs(residual.std() - expected) < 3.3 * expected / math.sqrt(2 * len(residual))
    assert abs(residual.mean()) < 3.3 * expected / math.sqrt(len(residual))


def test_gaussian_reports_epsilon_for_target() -> None:
    info = MechanismChain(["gaussian"], {"epsilon": 1.0}).describe()[0]
    assert info["epsilon"] == pytest.approx(1.0, rel=1e-6)
    assert info["noise_multiplier"] == pytest.approx(2 * 3.7306, rel=1e-3)  # replace-one: sensitivity 2c
    assert info["epsilon_rdp_opacus"] > info["epsilon"]


def test_label_rr_flip_rate_epsilon_and_unbiasedness() -> None:
    n = 40_000
    upload, labels, logits = make_batch(2, n)
    chain = MechanismChain(["label_rr"], {"epsilon": 1.0}, seed=5)
    rr = chain.mechanisms[0]
    noisy = rr.randomize(labels, C)
    q = math.exp(1.0) / (math.exp(1.0) + C - 1)
    assert abs((noisy == labels).mean() - q) < 4 * math.sqrt(q * (1 - q) / n)
    assert randomized_response_epsilon(q, C) == pytest.approx(1.0)
    assert randomized_response_epsilon(q, C) == pytest.approx(math.log(q / (1 - q) * (C - 1)))
    sent = chain.transform(upload, labels, logits)[0].delta
    # E[Δ̃] = Δ: the mean error is within sampling noise.
    assert np.abs((sent - upload.delta).mean(axis=0)).max() < 0.05


@pytest.mark.parametrize("n_classes", [2, 3, 4])
@pytest.mark.parametrize("epsilon", [0.5, 2.0])
def test_label_rr_keeps_the_label_at_the_k_ary_rate_and_its_epsilon_round_trips(n_classes: int,
                                                                                 epsilon: float) -> None:
    # C-ary RR keeps the true label with q = e^ε / (e^ε + C - 1) and reports each other class with
    # (1 - q) / (C - 1); the ratio q / that is e^ε. With two classes C - 1 = 1, so only C >= 3 tells
    # a keep probability that forgot the C - 1 term from the right one.
    n = 40_000
    labels = np.random.default_rng(n_classes).integers(0, n_classes, n)
    rr = MechanismChain(["label_rr"], {"epsilon": epsilon}, seed=11).mechanisms[0]
    q = math.exp(epsilon) / (math.exp(epsilon) + n_classes - 1)
    assert rr.keep_probability(n_classes) == pytest.approx(q, rel=1e-12)
    assert randomized_response_epsilon(rr.keep_probability(n_classes), n_classes) == pytest.approx(epsilon, rel=1e-12)
    noisy = rr.randomize(labels, n_classes)
    # 4.5 binomial standard deviations: a false alarm once in ~150,000 runs; at C = 3, ε = 0.5 the
    # wrong q (e^ε/(e^ε+1) = 0.62 vs 0.45) sits 70 standard deviations away.
    assert abs((noisy == labels).mean() - q) < 4.5 * math.sqrt(q * (1 - q) / n)
    # A flipped label is uniform over the other C - 1 classes (each (1 - q)/(C - 1)).
    shifts = ((noisy - labels) % n_classes)[noisy != labels]
    counts = np.bincount(shifts, minlength=n_classes)[1:]
    expected = len(shifts) / (n_classes - 1)
    assert np.all(np.abs(counts - expected) < 4.5 * math.sqrt(expected))


def test_rotation_mask_cancels_exactly_on_the_device() -> None:
    upload, labels, logits = make_batch(3)
    chain = MechanismChain(["rotation_mask"], seed=1)
    mask = chain.mechanisms[0]
    assert isinstance(mask, RotationMask)
    masked = chain.transform(upload, labels, logits)[0].delta
    assert not np.allclose(masked, upload.delta)
    np.testing.assert_allclose(mask.unmask(masked.astype(np.float64)), upload.delta, atol=1e-6)
    torch.manual_seed(0)
    network = AdditiveSideNetwork(SideNetworkShape(n_layers=L, hidden_size=D, rank=2, n_classes=C))
    torch.nn.init.normal_(network.head.weight)
    acts = torch.from_numpy(upload.activations.astype(np.float32))
    with torch.no_grad():
        masked_out = network(acts).numpy()
        chain.restore(network)
        np.testing.assert_allclose(network(acts).numpy(), mask.unmask(masked_out), atol=1e-5)


def test_int8_quantization_per_vector() -> None:
    values = np.random.default_rng(0).normal(size=(10, 3, 64)).astype(np.float32) * np.arange(1, 4)[None, :, None]
    quantized = quantize_int8(values)
    scale = np.abs(values).max(axis=-1, keepdims=True) / 127
    assert np.all(np.abs(quantized - values) <= scale / 2 + 1e-6)
    assert len(np.unique(np.round(quantized[0, 0] / scale[0, 0]))) <= 255


def test_activation_noise_clips_and_reports_epsilon() -> None:
    upload, labels, logits = make_batch(4)
    chain = MechanismChain(["activation_noise"], {"activation_noise_multiplier": 1.0, "activation_clip": 1.0},
                           seed=0)
    out = chain.transform(upload, labels, logits)[0]
    assert out.activations.shape == upload.activations.shape
    info = chain.describe()[0]
    assert info["epsilon"] == pytest.approx(analytic_gaussian_epsilon(1.0, 1e-5, 2 * math.sqrt(L)))


def test_activation_noise_scale_statistically() -> None:
    # Vectors well inside the clip ball are not clipped, so the released minus the sent values is the
    # noise alone: N(0, (multiplier · clip)²) per coordinate (fp16 rounding adds ~1e-7 relative variance).
    n, multiplier, clip = 20_000, 0.5, 4.0
    upload, labels, logits = make_batch(7, n)
    small = Upload(sample_ids=upload.sample_ids, activations=(upload.activations * 0.1).astype(np.float16),
                   delta=upload.delta, layers=upload.layers)
    assert np.linalg.norm(small.activations.astype(np.float32), axis=-1).max() < clip
    chain = MechanismChain(["activation_noise"], {"activation_noise_multiplier": multiplier,
                                                  "activation_clip": clip}, seed=2)
    released = chain.transform(small, labels, logits)[0].activations.astype(np.float64)
    residual = (released - small.activations.astype(np.float64)).ravel()
    expected = multiplier * clip
    # As for Δ above: 99.9% interval of the sample std, ±3.3·σ/√(2·count).
    assert abs(residual.std() - expected) < 3.3 * expected / math.sqrt(2 * len(residual))
    assert abs(residual.mean()) < 3.3 * expected / math.sqrt(len(residual))


def test_composition_runs_in_stage_order() -> None:
    chain = MechanismChain(["activation_noise", "gaussian", "label_rr"],
                           {"epsilon": 4.0, "activation_noise_multiplier": 0.1}, seed=0)
    assert chain.names == ["label_rr", "gaussian", "activation_noise"]
    upload, labels, logits = make_batch(5)
    assert chain.transform(upload, labels, logits)[0].delta.shape == (N, C)


@pytest.mark.parametrize("names, settings", [
    (["gaussian"], {"epsilon": -1.0}),
    (["gaussian"], {"epsilon": 1.0, "clip": 0.0}),
    (["gaussian"], {}),
    (["label_rr"], {}),
    (["activation_noise"], {}),
    (["nope"], {}),
    (["none", "gaussian"], {"epsilon": 1.0}),
    (["gaussian", "gaussian"], {"epsilon": 1.0}),
    (["he_ckks"], {"ckks_poly_modulus_degree": 8192, "ckks_coeff_mod_bit_sizes": (60, 60, 60, 60)}),
])
def test_bad_configurations_fail_clearly(names: list[str], settings: dict) -> None:
    with pytest.raises(UserInputError):
        MechanismChain(names, settings)


def test_safeguard_drops_a_harmful_side_output() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs = np.where(rng.random(200)[:, None] < 0.8, np.eye(2)[labels], np.eye(2)[1 - labels]) * 0.6 + 0.2
    harmful = (np.eye(2)[1 - labels] - 0.5) * 2
    decision = choose_shrink(probs, harmful, labels)
    assert decision.factor == 0.0 and decision.action == "dropped"
    helpful = (np.eye(2)[labels] - 0.5) * 2
    assert choose_shrink(probs, helpful, labels).validation_accuracy_chosen == 1.0
    assert choose_shrink(probs, helpful, labels).p_value < 1e-6


def test_safeguard_drops_a_gain_that_is_noise() -> None:
    labels = np.zeros(200, dtype=int)
    probs = np.tile([0.6, 0.4], (200, 1))
    probs[:40] = [0.4, 0.6]  # the backbone gets 160 / 200 right
    side = np.zeros((200, 2))
    side[:3] = [0.5, -0.5]  # fixes 3 samples ...
    side[40:42] = [-0.5, 0.5]  # ... and breaks 2: at most +1.5 points on validation, not significant
    decision = choose_shrink(probs, side, labels)
    assert decision.factor == 0.0 and decision.validation_accuracy_chosen == 0.8 and decision.p_value > 0.05
    side[3:30] = [0.5, -0.5]  # fixes 30 and breaks 2: significant, deployed
    decision = choose_shrink(probs, side, labels)
    assert decision.factor > 0 and decision.validation_accuracy_chosen >= 0.94 and decision.p_value < 1e-4


def test_shrink_to_zero_silences_the_side_network() -> None:
    network = AdditiveSideNetwork(SideNetworkShape(n_layers=L, hidden_size=D, rank=2, n_classes=C))
    torch.nn.init.normal_(network.head.weight)
    shrink_network(network, 0.0)
    assert torch.count_nonzero(network(torch.randn(4, L, D))) == 0


@pytest.mark.parametrize("names, mode", [(["he_ckks"], "side_network"), (["gaussian"], "device_local"),
                                         (["rotation_mask", "he_ckks"], "device_local")])
def test_a_mechanism_refuses_a_mode_it_does_not_support(names: list[str], mode: str) -> None:
    with pytest.raises(UserInputError, match=f"does not support training mode '{mode}'"):
        MechanismChain(names, {"epsilon": 1.0}, mode=MODES[mode])


def test_every_dp_claim_names_its_target() -> None:
    upload, labels, logits = make_batch(6)
    chain = MechanismChain(["gaussian", "label_rr", "activation_noise"],
                           {"epsilon": 2.0, "activation_noise_multiplier": 0.5}, seed=0)
    chain.transform(upload, labels, logits)
    claims = dict(chain.claims())
    assert {name: claim.target for name, claim in claims.items()} == {
        "gaussian": "delta", "label_rr": "delta", "activation_noise": "activations"}
    assert claims["gaussian"].epsilon == pytest.approx(2.0)
