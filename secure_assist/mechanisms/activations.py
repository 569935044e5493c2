"""Input-side protections: what the server sees of the pivot activations A."""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.errors import UserInputError
from protocol.messages import Upload
from secure_assist.mechanisms.accounting import analytic_gaussian_epsilon
from secure_assist.mechanisms.base import Mechanism, MechanismSettings, clip_rows, with_activations


class ActivationNoise(Mechanism):
    """Clip every layer's pivot vector to ‖A_i‖₂ <= c_a and add N(0, σ²c_a²) per coordinate.

    One release per sample of L clipped vectors: under replace-one adjacency the L2
    sensitivity of the whole upload is 2·c_a·√L, accounted with the analytic Gaussian.
    Useful ε are large (hundreds): the signal must survive in 576·L dimensions.
    """

    name = "activation_noise"
    stage = "activations"
    protects = "inputs (pivot activations)"
    guarantee = "(ε, δ)-DP per sample on the activations, replace-one adjacency (analytic Gaussian)"

    def __init__(self, settings: MechanismSettings, rng: np.random.Generator) -> None:
        super().__init__(settings, rng)
        if settings.activation_noise_multiplier is None:
            raise UserInputError("mechanism 'activation_noise' needs activation_noise_multiplier")
        self.n_layers: int | None = None

    def apply(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> Upload:
        self.n_layers = upload.activations.shape[1]
        bound = self.settings.activation_clip
        clipped = clip_rows(upload.activations.astype(np.float32), bound)
        noise = self.rng.normal(0.0, self.settings.activation_noise_multiplier * bound, size=clipped.shape)
        return with_activations(upload, clipped + noise.astype(np.float32))

    def describe(self) -> dict[str, Any]:
        info = {**super().describe(), "activation_clip": self.settings.activation_clip,
                "activation_noise_multiplier": self.settings.activation_noise_multiplier,
                "delta": self.settings.delta}
        if self.n_layers is not None:
            sensitivity = 2.0 * np.sqrt(self.n_layers)
            info["epsilon"] = analytic_gaussian_epsilon(self.settings.activation_noise_multiplier,
                                                        self.settings.delta, sensitivity)
        return info


class Int8Activations(Mechanism):
    """Round each layer's pivot vector to int8 levels with its own scale max|A_i|/127.

    The server sees only the dequantized values (the wire keeps the payload dtype). No
    formal guarantee: it removes low-order detail, which the audit measures.
    """

    name = "int8_activations"
    deterministic = True
    stage = "activations"
    protects = "inputs (precision of the pivot activations)"
    guarantee = "none (quantization)"

    def apply(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> Upload:
        return with_activations(upload, quantize_int8(upload.activations.astype(np.float32)))


def quantize_int8(values: np.ndarray) -> np.ndarray:
    """Per-vector symmetric int8 quantize-dequantize along the last axis."""
    scale = np.abs(values).max(axis=-1, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.round(values / scale), -127, 127) * scale).astype(np.float32)

