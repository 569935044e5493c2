"""What every protection mechanism is: a device-side transform of the outgoing upload.

A mechanism sees the plain `Upload` (and the device-only labels and label logits)
before anything leaves the device, returns what is sent instead, and declares what it
protects and its formal guarantee. Mechanisms that change what the server learns from
(e.g. a secret rotation of Δ) also undo their effect on the downloaded side network,
on the device.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from protocol.errors import UserInputError
from protocol.messages import Message, Upload
from protocol.side_network import AdditiveSideNetwork
from secure_assist.mechanisms.ckks_packing import CkksParameters


class PrivacyWarning(UserWarning):
    """Raised (as a warning) when a run sends signals that the server can read in the clear."""


@dataclass(frozen=True)
class MechanismSettings:
    """Parameters shared by the mechanisms (each reads the ones it needs)."""

    epsilon: float | None = None  # target ε per sample (gaussian, label_rr, activation_noise)
    delta: float = 1e-5
    noise_multiplier: float | None = None  # σ relative to the clip norm, instead of a target ε
    clip: float = 1.0  # ‖Δ‖₂ bound of the gaussian mechanism
    activation_clip: float = 50.0  # ‖A_i‖₂ bound per layer vector of activation_noise
    activation_noise_multiplier: float | None = None
    seed: int | None = None  # None: fresh OS entropy (a reproducible seed is for tests and sweeps)
    ckks_poly_modulus_degree: int = 8192
    ckks_coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    ckks_scale_bits: int = 40
    he_features: int = 128  # PCA dimensions of the server's label-free features
    he_ridge: float = 1000.0
    # Samples of Δ per ciphertext (coefficient packing): the upload is C·⌈n/b⌉ ciphertexts and
    # the reply C·⌈(k+1)/⌊N/b⌋⌉; 256 keeps both near 1-2 MB at n = 1,800, k = 128, N = 8192.
    he_block_samples: int = 256

    def __post_init__(self) -> None:
        for name in ("epsilon", "noise_multiplier", "activation_noise_multiplier"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserInputError(f"mechanism {name} must be a positive finite number, got {value}")
        for name in ("clip", "activation_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserInputError(f"mechanism {name} (clip norm) must be positive, got {value}")
        if self.he_features < 1 or not (math.isfinite(self.he_ridge) and self.he_ridge > 0):
            raise UserInputError("he_features must be >= 1 and he_ridge positive")
        if not 1 <= self.he_block_samples <= self.ckks_parameters().coefficient_count:
            raise UserInputError(f"he_block_samples must be in 1..{self.ckks_poly_modulus_degree} (the ring degree), "
                                 f"got {self.he_block_samples}")
        if not 0 < self.delta < 1:
            raise UserInputError(f"mechanism delta must be in (0, 1), got {self.delta}")

    def ckks_parameters(self) -> CkksParameters:
        """The CKKS ring, modulus chain and scale (validated; no key is made)."""
        return CkksParameters(self.ckks_poly_modulus_degree, tuple(self.ckks_coeff_mod_bit_sizes), self.ckks_scale_bits)


# Order in a composition: labels are randomized before Δ is formed, Δ is noised or
# masked before activations are touched, and encryption comes last.
STAGES = ("label", "delta", "activations", "encrypt")


class Mechanism:
    """Base class: subclasses set the class attributes and override `apply`."""

    name: ClassVar[str] = ""
    stage: ClassVar[str] = "delta"
    # Whether the mechanism reads MechanismSettings.epsilon (sweeps vary ε only where it applies).
    uses_epsilon: ClassVar[bool] = False
    # Whether the output is a fixed function of the upload (no randomness, no secret): only then
    # may an interrupted network upload be resumed, re-sending a batch without a second release.
    deterministic: ClassVar[bool] = False
    protects: ClassVar[str] = ""
    guarantee: ClassVar[str] = ""

    def __init__(self, settings: MechanismSettings, rng: np.random.Generator) -> None:
        self.settings = settings
        self.rng = rng

    def apply(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> Upload:
        """The protected upload (subclasses)."""
        return upload

    def transform(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> list[Message]:
        """The messages sent instead of `upload` (one protected upload by default)."""
        return [self.apply(upload, labels, label_logits)]

    def flush(self) -> list[Message]:
        """Messages held back until every batch was seen (none by default)."""
        return []

    def restore(self, network: AdditiveSideNetwork) -> None:
        """Undo, on the device, what the mechanism did to the training targets (nothing by default)."""

    def describe(self) -> dict[str, Any]:
        """Name, what is protected, the formal guarantee and its parameters (for summaries)."""
        return {"name": self.name, "protects": self.protects, "guarantee": self.guarantee}


def with_delta(upload: Upload, delta: np.ndarray) -> Upload:
    """The same upload with a new Δ."""
    return Upload(sample_ids=upload.sample_ids, activations=upload.activations,
                  delta=np.ascontiguousarray(delta, dtype=np.float32), layers=upload.layers)


def with_activations(upload: Upload, activations: np.ndarray) -> Upload:
    """The same upload with new activations, kept in the payload dtype."""
    return Upload(sample_ids=upload.sample_ids, delta=upload.delta, layers=upload.layers,
                  activations=np.ascontiguousarray(activations.astype(upload.activations.dtype)))


def clip_rows(values: np.ndarray, bound: float) -> np.ndarray:
    """Scale each vector along the last axis to L2 norm at most `bound`."""
    norms = np.linalg.norm(values, axis=-1, keepdims=True)
    return values * np.minimum(1.0, bound / np.maximum(norms, 1e-12))


def warn_unprotected(what: str) -> None:
    """Emit the PrivacyWarning of a run that sends `what` in the clear."""
    warnings.warn(f"mechanism 'none': {what} sent to the server unprotected", PrivacyWarning, stacklevel=3)
