"""Protections of the difference signal Δ = onehot(y) - p_b (label privacy)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import ortho_group

from protocol.errors import UserInputError
from protocol.messages import Upload
from protocol.side_network import AdditiveSideNetwork
from secure_assist.mechanisms.accounting import (
    analytic_gaussian_epsilon,
    analytic_gaussian_sigma,
    randomized_response_epsilon,
    randomized_response_keep_probability,
    rdp_gaussian_epsilon,
)
from secure_assist.mechanisms.base import Mechanism, MechanismSettings, clip_rows, warn_unprotected, with_delta


class NoProtection(Mechanism):
    """The paper baseline: Δ (hence the label: argmax Δ = y) is sent in the clear."""

    name = "none"
    deterministic = True
    protects = "nothing"
    guarantee = "none: argmax Δ reveals every label; activations reveal the inputs"

    def __init__(self, settings: MechanismSettings, rng: np.random.Generator) -> None:
        super().__init__(settings, rng)
        warn_unprotected("Δ (and with it every label) and the pivot activations are")


class GaussianDelta(Mechanism):
    """Clip ‖Δ‖₂ <= c and add N(0, σ²c²) per coordinate: one Gaussian release per sample.

    Adjacency *(choice)*: replace-one, i.e. any sample's clipped Δ may become any other
    vector of the c-ball (a label flip does that), so the L2 sensitivity is 2c. The
    ε used is the analytic Gaussian one (tight for one release); the zero-out ε
    (sensitivity c, the DP-SGD convention) and Opacus' RDP ε are reported beside it.
    """

    name = "gaussian"
    protects = "labels and Δ of each sample"
    guarantee = "(ε, δ)-DP per sample, replace-one adjacency, one release (analytic Gaussian)"
    uses_epsilon = True

    def __init__(self, settings: MechanismSettings, rng: np.random.Generator) -> None:
        super().__init__(settings, rng)
        if (settings.epsilon is None) == (settings.noise_multiplier is None):
            raise UserInputError("mechanism 'gaussian' needs exactly one of epsilon or noise_multiplier")
        self.sensitivity = 2.0  # in units of the clip norm c (replace-one)
        self.noise_multiplier = (settings.noise_multiplier if settings.noise_multiplier is not None
                                 else analytic_gaussian_sigma(settings.epsilon, settings.delta, self.sensitivity))
        self.epsilon = analytic_gaussian_epsilon(self.noise_multiplier, settings.delta, self.sensitivity)

    def apply(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> Upload:
        clipped = clip_rows(upload.delta.astype(np.float64), self.settings.clip)
        noise = self.rng.normal(0.0, self.noise_multiplier * self.settings.clip, size=clipped.shape)
        return with_delta(upload, clipped + noise)

    def describe(self) -> dict[str, Any]:
        rdp_epsilon, rdp_order = rdp_gaussian_epsilon(self.noise_multiplier, self.settings.delta, self.sensitivity)
        return {**super().describe(), "clip": self.settings.clip, "noise_multiplier": self.noise_multiplier,
                "delta": self.settings.delta, "epsilon": self.epsilon, "accountant": "analytic_gaussian",
                "epsilon_rdp_opacus": rdp_epsilon, "rdp_order": rdp_order,
                "epsilon_zero_out_adjacency": analytic_gaussian_epsilon(self.noise_multiplier, self.settings.delta)}


class LabelRandomizedResponse(Mechanism):
    """Randomized response on y before Δ is formed, then an unbiased target.

    ỹ = y with probability q = e^ε/(e^ε+C-1), else a uniformly drawn other class. Since
    E[onehot(ỹ)] = p + (q-p)·onehot(y) with p = (1-q)/(C-1), the device sends
    Δ̃ = (onehot(ỹ) - p)/(q - p) - p_b, whose expectation is the true Δ; this is
    post-processing of ỹ and p_b (a function of x only), so it stays ε-label-DP.
    """

    name = "label_rr"
    stage = "label"
    protects = "labels"
    guarantee = "ε-label-DP per sample (randomized response); inputs not protected"
    uses_epsilon = True

    def __init__(self, settings: MechanismSettings, rng: np.random.Generator) -> None:
        super().__init__(settings, rng)
        if settings.epsilon is None:
            raise UserInputError("mechanism 'label_rr' needs epsilon")
        self.n_classes: int | None = None

    def keep_probability(self, n_classes: int) -> float:
        """q for this ε and C."""
        return randomized_response_keep_probability(self.settings.epsilon, n_classes)

    def randomize(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """ỹ: each label kept with probability q, else replaced by a uniform other class."""
        keep = self.rng.random(len(labels)) < self.keep_probability(n_classes)
        shift = self.rng.integers(1, n_classes, size=len(labels))
        return np.where(keep, labels, (labels + shift) % n_classes)

    def apply(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> Upload:
        n_classes = label_logits.shape[1]
        self.n_classes = n_classes
        q = self.keep_probability(n_classes)
        p = (1 - q) / (n_classes - 1)
        noisy = self.randomize(labels, n_classes)
        unbiased_onehot = (np.eye(n_classes)[noisy] - p) / (q - p)
        backbone_probs = torch.softmax(torch.from_numpy(label_logits).float(), dim=-1).numpy()
        return with_delta(upload, unbiased_onehot - backbone_probs)

    def describe(self) -> dict[str, Any]:
        info = {**super().describe(), "epsilon": self.settings.epsilon}
        if self.n_classes is not None:
            q = self.keep_probability(self.n_classes)
            info.update(keep_probability=q, epsilon_check=randomized_response_epsilon(q, self.n_classes))
        return info


class RotationMask(Mechanism):
    """Δ·Q with a secret random orthogonal Q (C×C) held by the device.

    Obfuscation, not privacy: no formal guarantee, and clustering the masked Δ recovers
    the label partition. The device folds Qᵀ back into the downloaded head, so the
    deployed model is exactly the one trained on unmasked targets would be (MSE is
    rotation invariant).
    """

    name = "rotation_mask"
    protects = "label names of Δ (obfuscation only)"
    guarantee = "none (secret orthogonal transform; falls to clustering)"

    def __init__(self, settings: MechanismSettings, rng: np.random.Generator) -> None:
        super().__init__(settings, rng)
        self.rotation: np.ndarray | None = None

    def secret(self, n_classes: int) -> np.ndarray:
        """The device's secret Q, drawn once (Haar-distributed)."""
        if self.rotation is None:
            self.rotation = ortho_group.rvs(n_classes, random_state=self.rng)
        return self.rotation

    def apply(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> Upload:
        return with_delta(upload, upload.delta.astype(np.float64) @ self.secret(upload.delta.shape[1]))

    def unmask(self, values: np.ndarray) -> np.ndarray:
        """Undo the rotation on (n, C) values."""
        return values @ self.rotation.T

    def restore(self, network: AdditiveSideNetwork) -> None:
        # out·Qᵀ = h·(Q·W)ᵀ + Q·b: fold the inverse rotation into the linear head.
        q = torch.from_numpy(self.rotation).float()
        with torch.no_grad():
            network.head.weight.copy_(q @ network.head.weight)
            network.head.bias.copy_(q @ network.head.bias)

