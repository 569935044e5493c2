"""Protections of generation uploads: Gaussian DP on the whole per-sample r, activation noise
over every position's states, and which modes accept which mechanism."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from protocol.errors import UserInputError
from protocol.modes.generation.messages import GenerationUpload
from secure_assist.mechanisms import MECHANISMS, MechanismChain, PrivacyWarning
from protocol.modes.registry import MODES

COUNTS = np.array([3, 1, 4])
D = 8


def upload(seed: int = 0, scale: float = 5.0) -> GenerationUpload:
    rng = np.random.default_rng(seed)
    rows = int(COUNTS.sum())
    return GenerationUpload(sample_ids=rng.integers(0, 256, (3, 16), dtype=np.uint8), counts=COUNTS,
                            activations=rng.normal(size=(rows, 2, D)).astype(np.float16),
                            residual=(scale * rng.normal(size=(rows, D))).astype(np.float32), layers=(1, 2))


def released(names: list[str], values: dict, message: GenerationUpload, seed: int = 0) -> GenerationUpload:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        chain = MechanismChain(names, values, seed=seed, mode=MODES["generation"])
        return chain.transform(message, np.zeros(int(COUNTS.sum()), np.int64), np.zeros((int(COUNTS.sum()), 0)))[0]


def test_gaussian_r_clips_each_whole_sample_signal_and_adds_calibrated_noise() -> None:
    message = upload()
    clip = 2.0
    out = released(["gaussian_r"], {"noise_multiplier": 1e-9, "residual_clip": clip}, message)
    for rows in out.sample_rows():
        # The norm over all of a sample's positions together is clipped, not each position's.
        assert np.linalg.norm(out.residual[rows]) == pytest.approx(clip, rel=1e-4)
    np.testing.assert_array_equal(out.activations, message.activations)
    noisy = [released(["gaussian_r"], {"noise_multiplier": 0.5, "residual_clip": clip}, upload(scale=0.0), seed=s)
             for s in range(200)]
    assert np.std([m.residual for m in noisy]) == pytest.approx(0.5 * clip, rel=0.05)


def test_gaussian_r_claims_epsilon_on_r_and_is_deterministic_under_a_seed() -> None:
    chain = MechanismChain(["gaussian_r"], {"epsilon": 4.0}, seed=3, mode=MODES["generation"])
    (claim_name, claim), = chain.claims()
    assert claim_name == "gaussian_r" and claim.target == "residual" and claim.epsilon == pytest.approx(4.0)
    first = released(["gaussian_r"], {"epsilon": 4.0}, upload(), seed=3)
    second = released(["gaussian_r"], {"epsilon": 4.0}, upload(), seed=3)
    np.testing.assert_array_equal(first.residual, second.residual)


def test_activation_noise_counts_every_position_of_a_sample() -> None:
    chain = MechanismChain(["activation_noise"], {"activation_noise_multiplier": 50.0}, seed=0,
                           mode=MODES["generation"])
    chain.transform(upload(), np.zeros(8, np.int64), np.zeros((8, 0)))
    single = MechanismChain(["activation_noise"], {"activation_noise_multiplier": 50.0}, seed=0)
    single.mechanisms[0].vectors = 2  # one position of two layers: a classification pivot upload
    # Four positions × two layers release more per sample than one position: a larger ε at the same σ.
    assert chain.claims()[0][1].epsilon > single.claims()[0][1].epsilon


@pytest.mark.parametrize("name", ["gaussian", "label_rr", "rotation_mask", "he_ckks"])
def test_delta_mechanisms_refuse_the_generation_mode(name: str) -> None:
    with pytest.raises(UserInputError, match="does not support training mode 'generation'"):
        MechanismChain([name], {"epsilon": 1.0}, mode=MODES["generation"])


def test_gaussian_r_is_generation_only() -> None:
    assert MECHANISMS["gaussian_r"].modes == ("generation",)
    with pytest.raises(UserInputError, match="does not support training mode 'side_network'"):
        MechanismChain(["gaussian_r"], {"epsilon": 1.0}, mode=MODES["side_network"])
