"""Input-side protections: what the server sees of the pivot activations A."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol.errors import UserInputError
from protocol.generation_messages import GenerationUpload
from protocol.messages import Upload
from secure_assist.mechanisms.accounting import analytic_gaussian_epsilon
from secure_assist.mechanisms.base import (
    ACTIVATIONS_TARGET, GENERATION_MODE, UPLOADING_MODES, DpClaim, Mechanism, UploadT, clip_rows, positive,
    probability, with_activations,
)
from secure_assist.mechanisms.delta import DP_DELTA_HELP


@dataclass(frozen=True)
class ActivationNoiseParameters:
    """Parameters of `activation_noise`."""

    activation_noise_multiplier: float | None = field(
        default=None, metadata={"help": "activation_noise σ relative to --activation-clip"})
    activation_clip: float = field(default=50.0, metadata={"help": "L2 clip norm of each layer's pivot vector "
                                                                   "(activation_noise)"})
    dp_delta: float = field(default=1e-5, metadata={"help": DP_DELTA_HELP})

    def __post_init__(self) -> None:
        positive("activation_noise_multiplier", self.activation_noise_multiplier)
        positive("activation_clip", self.activation_clip, allow_none=False)
        probability("dp_delta", self.dp_delta)


class ActivationNoise(Mechanism):
    """Clip every layer's pivot vector to ‖A_i‖₂ <= c_a and add N(0, σ²c_a²) per coordinate.

    One release per sample of L clipped vectors: under replace-one adjacency the L2
    sensitivity of the whole upload is 2·c_a·√L, accounted with the analytic Gaussian.
    Useful ε are large (hundreds): the signal must survive in 576·L dimensions.
    Generation uploads hold L vectors at each of a sample's T loss positions: the claim
    then uses L·T with the largest T seen in the run (answers are capped at max_answer_tokens).
    """

    name = "activation_noise"
    modes = UPLOADING_MODES + (GENERATION_MODE,)
    Parameters = ActivationNoiseParameters
    dp_target = ACTIVATIONS_TARGET
    stage = "activations"
    protects = "inputs (pivot activations)"
    guarantee = "(ε, δ)-DP per sample on the activations, replace-one adjacency (analytic Gaussian)"

    @classmethod
    def check(cls, parameters: ActivationNoiseParameters) -> None:
        if parameters.activation_noise_multiplier is None:
            raise UserInputError("mechanism 'activation_noise' needs activation_noise_multiplier")

    def __init__(self, parameters: ActivationNoiseParameters, rng: np.random.Generator) -> None:
        super().__init__(parameters, rng)
        self.check(parameters)
        self.vectors: int | None = None  # clipped vectors per sample (the largest seen)

    def noise_scale(self) -> float:
        """Standard deviation of the added noise."""
        return self.parameters.activation_noise_multiplier * self.parameters.activation_clip

    def apply(self, upload: UploadT, labels: np.ndarray, label_logits: np.ndarray) -> UploadT:
        self.vectors = max(self.vectors or 0, vectors_per_sample(upload))
        clipped = clip_rows(upload.activations.astype(np.float32), self.parameters.activation_clip)
        noise = self.rng.normal(0.0, self.noise_scale(), size=clipped.shape)
        return with_activations(upload, clipped + noise.astype(np.float32))

    def claim(self) -> DpClaim | None:
        if self.vectors is None:
            return None  # the sensitivity depends on the number of uploaded layers (and positions)
        sensitivity = 2.0 * np.sqrt(self.vectors)
        epsilon = analytic_gaussian_epsilon(self.parameters.activation_noise_multiplier, self.parameters.dp_delta,
                                            sensitivity)
        return DpClaim(target=self.dp_target, epsilon=epsilon, delta=self.parameters.dp_delta)

    def describe(self) -> dict[str, Any]:
        info = {**super().describe(), "activation_clip": self.parameters.activation_clip,
                "activation_noise_multiplier": self.parameters.activation_noise_multiplier,
                "delta": self.parameters.dp_delta}
        claim = self.claim()
        if claim is not None:
            info["epsilon"] = claim.epsilon
        return info


class Int8Activations(Mechanism):
    """Round each layer's pivot vector to int8 levels with its own scale max|A_i|/127.

    The server sees only the dequantized values (the wire keeps the payload dtype). No
    formal guarantee: it removes low-order detail, which the audit measures.
    """

    name = "int8_activations"
    modes = UPLOADING_MODES + (GENERATION_MODE,)
    deterministic = True
    stage = "activations"
    protects = "inputs (precision of the pivot activations)"
    guarantee = "none (quantization)"

    def apply(self, upload: UploadT, labels: np.ndarray, label_logits: np.ndarray) -> UploadT:
        return with_activations(upload, quantize_int8(upload.activations.astype(np.float32)))


def vectors_per_sample(upload: Upload | GenerationUpload) -> int:
    """Activation vectors one sample releases: its layers, times its loss positions (generation)."""
    positions = int(upload.counts.max()) if isinstance(upload, GenerationUpload) else 1
    return upload.activations.shape[1] * positions


def quantize_int8(values: np.ndarray) -> np.ndarray:
    """Per-vector symmetric int8 quantize-dequantize along the last axis."""
    scale = np.abs(values).max(axis=-1, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.round(values / scale), -127, 127) * scale).astype(np.float32)

