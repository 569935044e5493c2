"""Protections of the difference signal Δ = onehot(y) - p_b (label privacy)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from scipy.stats import ortho_group

from protocol.errors import UserInputError
from protocol.modes.generation.messages import GenerationUpload
from protocol.wire.messages import Upload
from protocol.model.side_output import SideOutput
from secure_assist.mechanisms.accounting import (
    analytic_gaussian_epsilon,
    analytic_gaussian_sigma,
    randomized_response_epsilon,
    randomized_response_keep_probability,
    rdp_gaussian_epsilon,
)
from secure_assist.mechanisms.base import (
    DELTA_TARGET, GENERATION_KIND, GENERATION_MODE, RESIDUAL_TARGET, DpClaim, Mechanism, ModeTraits, clip_rows,
    warn_unprotected, with_delta,
)
from secure_assist.mechanism_parameters import GaussianParameters, GaussianResidualParameters, LabelRRParameters

class NoProtection(Mechanism):
    """The paper baseline: Δ (hence the label: argmax Δ = y) is sent in the clear."""

    name = "none"
    deterministic = True
    protects = "nothing"
    guarantee = "none: argmax Δ reveals every label; activations reveal the inputs"

    def __init__(self, parameters: Any, rng: np.random.Generator) -> None:
        super().__init__(parameters, rng)
        self.warned = False  # once per run, when the first upload leaves

    @classmethod
    def supports(cls, mode: ModeTraits) -> bool:
        return True  # also the only choice of a mode that uploads nothing

    def apply(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> Upload:
        if not self.warned:
            warn_unprotected("r (and with it every answer token) and the answer-position activations are"
                             if isinstance(upload, GenerationUpload) else
                             "Δ (and with it every label) and the pivot activations are")
            self.warned = True
        return upload


# The Gaussian mechanisms' guarantees name their releases: boosting rounds replace this with R of them.
ONE_RELEASE = "one release"


class GaussianDelta(Mechanism):
    """Clip ‖Δ‖₂ <= c and add N(0, σ²c²) per coordinate: one Gaussian release per sample and round.

    Adjacency *(choice)*: replace-one, i.e. any sample's clipped Δ may become any other
    vector of the c-ball (a label flip does that), so the L2 sensitivity is 2c. The
    ε used is the analytic Gaussian one (tight for one release); the zero-out ε
    (sensitivity c, the DP-SGD convention) and Opacus' RDP ε are reported beside it.

    Boosting rounds (`rounds` R > 1) release each sample's Δ once per round, with fresh
    noise. R Gaussian releases of noise σ compose exactly into one release of noise σ/√R
    (their joint likelihood ratio is that of the summed release), so every ε is that of
    σ/√R: for a target ε each round's noise is √R times the one-release σ, and the claimed
    (ε, δ) covers all R rounds.
    """

    name = "gaussian"
    Parameters = GaussianParameters
    dp_target = DELTA_TARGET
    protects = "labels and Δ of each sample"
    guarantee = f"(ε, δ)-DP per sample, replace-one adjacency, {ONE_RELEASE} (analytic Gaussian)"
    sensitivity = 2.0  # in units of the clip norm c (replace-one)

    @classmethod
    def check(cls, parameters: GaussianParameters) -> None:
        if (parameters.epsilon is None) == (parameters.noise_multiplier is None):
            raise UserInputError(f"mechanism {cls.name!r} needs exactly one of epsilon or noise_multiplier")

    def __init__(self, parameters: GaussianParameters, rng: np.random.Generator) -> None:
        super().__init__(parameters, rng)
        root = math.sqrt(self.releases)
        # σ of each release (per round), and σ/√R: the one release that R of them compose into.
        self.noise_multiplier = (parameters.noise_multiplier if parameters.noise_multiplier is not None
                                 else root * analytic_gaussian_sigma(parameters.epsilon, parameters.dp_delta,
                                                                     self.sensitivity))
        self.composed_noise_multiplier = self.noise_multiplier / root
        self.epsilon = analytic_gaussian_epsilon(self.composed_noise_multiplier, parameters.dp_delta,
                                                 self.sensitivity)

    @property
    def releases(self) -> int:
        """How often each sample's signal is released: once per boosting round."""
        return self.parameters.rounds

    @property
    def clip_norm(self) -> float:
        """c, the L2 bound of each sample's released signal."""
        return self.parameters.clip

    def noised(self, clipped: np.ndarray) -> np.ndarray:
        """The clipped signal plus N(0, σ²c²) per coordinate."""
        return clipped + self.rng.normal(0.0, self.noise_multiplier * self.clip_norm, size=clipped.shape)

    def apply(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> Upload:
        return with_delta(upload, self.noised(clip_rows(upload.delta.astype(np.float64), self.clip_norm)))

    def claim(self) -> DpClaim:
        return DpClaim(target=self.dp_target, epsilon=self.epsilon, delta=self.parameters.dp_delta)

    def describe(self) -> dict[str, Any]:
        delta, sigma = self.parameters.dp_delta, self.composed_noise_multiplier
        rdp_epsilon, rdp_order = rdp_gaussian_epsilon(sigma, delta, self.sensitivity)
        info = {**super().describe(), "clip": self.clip_norm, "noise_multiplier": self.noise_multiplier,
                "delta": delta, "epsilon": self.epsilon, "accountant": "analytic_gaussian",
                "epsilon_rdp_opacus": rdp_epsilon, "rdp_order": rdp_order,
                "epsilon_zero_out_adjacency": analytic_gaussian_epsilon(sigma, delta)}
        if self.releases > 1:  # one release reads as before; rounds say what the ε covers
            info.update(guarantee=self.guarantee.replace(ONE_RELEASE, f"{self.releases} releases (one per round) "
                                                                      "composed exactly"),
                        rounds=self.releases, noise_multiplier_per_round=self.noise_multiplier,
                        composed_noise_multiplier=sigma)
        return info


class GaussianResidual(GaussianDelta):
    """Generation: clip each sample's whole difference signal (r_1..r_T concatenated) to
    L2 norm c and add N(0, σ²c²) per coordinate. The server caches it, so each sample's r
    is released once per boosting round (once without rounds): one Gaussian release per
    sample and round, replace-one adjacency (sensitivity 2c), accounted like `gaussian`
    (R rounds compose exactly, so each round's σ is √R times the one-release σ). What it does
    not cover: the activations (use `activation_noise` or fewer, deeper layers) and the number
    of answer positions."""

    name = "gaussian_r"
    Parameters = GaussianResidualParameters
    dp_target = RESIDUAL_TARGET
    modes = (GENERATION_MODE,)
    task_kinds = (GENERATION_KIND,)
    protects = "answer tokens through r (the generation difference signal)"
    guarantee = f"(ε, δ)-DP per sample on r, replace-one adjacency, {ONE_RELEASE} (analytic Gaussian)"

    @property
    def clip_norm(self) -> float:
        return self.parameters.residual_clip

    def apply(self, upload: GenerationUpload, labels: np.ndarray, label_logits: np.ndarray) -> GenerationUpload:
        residual = upload.residual.astype(np.float64)
        clipped = np.concatenate([clip_rows(residual[rows].reshape(1, -1), self.clip_norm).reshape(-1, residual.shape[1])
                                  for rows in upload.sample_rows()])
        return replace(upload, residual=np.ascontiguousarray(self.noised(clipped), dtype=np.float32))


class LabelRandomizedResponse(Mechanism):
    """Randomized response on y before Δ is formed, then an unbiased target.

    ỹ = y with probability q = e^ε/(e^ε+C-1), else a uniformly drawn other class. Since
    E[onehot(ỹ)] = p + (q-p)·onehot(y) with p = (1-q)/(C-1), the device sends
    Δ̃ = (onehot(ỹ) - p)/(q - p) - p_b, whose expectation is the true Δ; this is
    post-processing of ỹ and p_b (a function of x only), so it stays ε-label-DP.
    """

    name = "label_rr"
    Parameters = LabelRRParameters
    dp_target = DELTA_TARGET
    label_dp = True
    stage = "label"
    protects = "labels"
    guarantee = "ε-label-DP per sample (randomized response); inputs not protected"
    required = ("epsilon",)

    def __init__(self, parameters: LabelRRParameters, rng: np.random.Generator) -> None:
        super().__init__(parameters, rng)
        self.n_classes: int | None = None

    def keep_probability(self, n_classes: int) -> float:
        """q for this ε and C."""
        return randomized_response_keep_probability(self.parameters.epsilon, n_classes)

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

    def claim(self) -> DpClaim:
        # Label-DP: Δ̃ is the only released function of the label (p_b depends on x alone).
        return DpClaim(target=self.dp_target, epsilon=self.parameters.epsilon, delta=0.0)

    def describe(self) -> dict[str, Any]:
        info = {**super().describe(), "epsilon": self.parameters.epsilon}
        if self.n_classes is not None:
            q = self.keep_probability(self.n_classes)
            info.update(keep_probability=q, epsilon_check=randomized_response_epsilon(q, self.n_classes))
        return info


class RotationMask(Mechanism):
    """Δ·Q with a secret random orthogonal Q (C×C) held by the device.

    Obfuscation, not privacy: no formal guarantee, and clustering the masked Δ recovers
    the label partition. The device folds Qᵀ back into the downloaded side output (any
    mode's: its last map is linear), so the deployed model is exactly the one trained on
    unmasked targets would be (MSE and ridge regression are rotation invariant).
    """

    name = "rotation_mask"
    protects = "label names of Δ (obfuscation only)"
    guarantee = "none (secret orthogonal transform; falls to clustering)"

    def __init__(self, parameters: Any, rng: np.random.Generator) -> None:
        super().__init__(parameters, rng)
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

    def restore(self, side: SideOutput) -> SideOutput:
        # The side output learned Δ·Q; its output times Qᵀ is what unmasked targets give.
        side.map_outputs_(self.rotation.T)
        return side

