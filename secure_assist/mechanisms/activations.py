"""Input-side protections: what the server sees of the pivot activations A."""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.modes.generation.messages import GenerationUpload
from protocol.wire.messages import Upload
from protocol.model.input_maps import ClippedInput, RotatedInput, rotate
from protocol.model.names import ROTATION_MECHANISM
from protocol.model.side_output import SideOutput
from secure_assist.mechanisms.accounting import analytic_gaussian_epsilon
from secure_assist.mechanisms.base import (
    ACTIVATIONS_TARGET, CLASSIFICATION_KIND, GENERATION_KIND, DpClaim, Mechanism, UploadT, clip_rows,
    with_activations,
)
from secure_assist.mechanism_parameters import ActivationNoiseParameters


class ActivationNoise(Mechanism):
    """Clip every layer's pivot vector to ‖A_i‖₂ <= c_a and add N(0, σ²c_a²) per coordinate.

    One release per sample of L clipped vectors: under replace-one adjacency the L2
    sensitivity of the whole upload is 2·c_a·√L, accounted with the analytic Gaussian.
    Useful ε are large (hundreds): the signal must survive in 576·L dimensions.
    Generation uploads hold L vectors at each of a sample's T loss positions: the claim
    then uses L·T with the largest T seen in the run (answers are capped at max_answer_tokens).
    """

    name = "activation_noise"
    task_kinds = (CLASSIFICATION_KIND, GENERATION_KIND)
    Parameters = ActivationNoiseParameters
    dp_target = ACTIVATIONS_TARGET
    stage = "activations"
    protects = "inputs (pivot activations)"
    guarantee = "(ε, δ)-DP per sample on the activations, replace-one adjacency (analytic Gaussian)"
    required = ("activation_noise_multiplier",)

    def __init__(self, parameters: ActivationNoiseParameters, rng: np.random.Generator) -> None:
        super().__init__(parameters, rng)
        self.vectors: int | None = None  # clipped vectors per sample (the largest seen)

    def noise_scale(self) -> float:
        """Standard deviation of the added noise."""
        return self.parameters.activation_noise_multiplier * self.parameters.activation_clip

    def apply(self, upload: UploadT, labels: np.ndarray, label_logits: np.ndarray) -> UploadT:
        self.vectors = max(self.vectors or 0, vectors_per_sample(upload))
        clipped = clip_rows(upload.activations.astype(np.float32), self.parameters.activation_clip)
        noise = self.rng.normal(0.0, self.noise_scale(), size=clipped.shape)
        return with_activations(upload, clipped + noise.astype(np.float32))

    def restore(self, side: SideOutput) -> SideOutput:
        # The side output learned on clipped states: the device clips its own the same way
        # (the noise is zero-mean and is not added at prediction time).
        return ClippedInput(side, self.parameters.activation_clip)

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
    task_kinds = (CLASSIFICATION_KIND, GENERATION_KIND)
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


class ActivationRotation(Mechanism):
    """A_i·R_i with a secret Haar-random orthogonal R_i per uploaded layer, held by the device.

    The server trains on rotated states; the device wraps the side output it gets back in
    the same rotation (`protocol.model.input_maps.RotatedInput`), which travels in its model
    file and never to the server. Side networks and ridge heads learn as well in any
    orthonormal basis, but everything the server would read in the backbone's own
    coordinates (public head, embeddings, public-text features, φ on plain states) no
    longer applies. Obfuscation without a formal guarantee: norms and inner products
    within a layer are unchanged, which the alignment attacks exploit.
    """

    name = ROTATION_MECHANISM
    stage = "activations"
    protects = ("inputs, the activations-only label leak and the model (φ reads pivot states in secret "
                "coordinates)")
    guarantee = "none (secret orthogonal transform per layer; norms and within-layer inner products are kept)"

    def __init__(self, parameters: object, rng: np.random.Generator) -> None:
        super().__init__(parameters, rng)
        self.rotations: np.ndarray | None = None
        self.payload_dtype: str | None = None

    def secret(self, n_layers: int, width: int) -> np.ndarray:
        """The device's secret (L, d, d) rotations, drawn once on the first upload."""
        if self.rotations is None:
            self.rotations = np.stack([haar_orthogonal(width, self.rng) for _ in range(n_layers)]).astype(np.float32)
        return self.rotations

    def apply(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> Upload:
        _, n_layers, width = upload.activations.shape
        self.payload_dtype = upload.activations.dtype.name
        return with_activations(upload, rotate(upload.activations, self.secret(n_layers, width), self.payload_dtype))

    def restore(self, side: SideOutput) -> SideOutput:
        if self.rotations is None:
            return side  # nothing was uploaded, so nothing was rotated
        # The side output learned on rotated states: it reads the device's states through R.
        return RotatedInput(side, self.rotations, self.payload_dtype)


def haar_orthogonal(width: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed orthogonal matrix: QR of a Gaussian matrix with R's diagonal made
    positive (Mezzadri 2007); scipy's ortho_group takes seconds at d = 576, this milliseconds."""
    q, r = np.linalg.qr(rng.standard_normal((width, width)))
    return q * np.sign(np.diag(r))
