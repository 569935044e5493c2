"""Every mechanism's typed parameters, and the one list of mechanism names.

The CLI generates its flags, and the config dataclasses their fields, from these
dataclasses before any command runs, so this module imports no mechanism: the
mechanisms themselves (`secure_assist.mechanisms.MECHANISMS`) load torch, SciPy and
TenSEAL, which would make `secure-assist --help` take seconds. Each mechanism class
points to its dataclass here (`Parameters`), and the package checks on import that its
classes and `MECHANISM_PARAMETERS` name the same mechanisms with the same dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from protocol.errors import UserInputError
from protocol.model.names import ROTATION_MECHANISM
from protocol.modes.ckks_ridge.packing import CkksParameters

@dataclass(frozen=True)
class NoParameters:
    """A mechanism without parameters."""


def positive(name: str, value: float | None, allow_none: bool = True) -> None:
    """A parameter that must be a positive finite number (or None when allowed)."""
    if value is None and allow_none:
        return
    if value is None or isinstance(value, bool) or not (math.isfinite(value) and value > 0):
        raise UserInputError(f"mechanism parameter {name} must be a positive finite number, got {value}")


def probability(name: str, value: float) -> None:
    """A parameter strictly between 0 and 1 (e.g. δ)."""
    if not 0 < value < 1:
        raise UserInputError(f"mechanism parameter {name} must be in (0, 1), got {value}")


def releases(name: str, value: int) -> None:
    """A parameter that counts releases: a whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserInputError(f"mechanism parameter {name} must be a whole number of at least 1, got {value}")


EPSILON_HELP = "target per-sample ε"
ROUNDS_HELP = "releases of each sample's signal (Δ or r): one per boosting round"
DP_DELTA_HELP = "δ of the Gaussian mechanisms"


@dataclass(frozen=True)
class GaussianParameters:
    """Parameters of `gaussian`: exactly one of ε or the noise multiplier."""

    epsilon: float | None = field(default=None, metadata={"help": EPSILON_HELP + " (gaussian, label_rr)"})
    dp_delta: float = field(default=1e-5, metadata={"help": DP_DELTA_HELP})
    noise_multiplier: float | None = field(default=None, metadata={"help": "gaussian noise σ relative to --clip "
                                                                           "(instead of --epsilon)"})
    clip: float = field(default=1.0, metadata={"help": "L2 clip norm c of Δ (gaussian)"})
    # Each boosting round releases every sample's Δ once more (the config's `rounds`, whose help the CLI shows).
    rounds: int = field(default=1, metadata={"help": ROUNDS_HELP})

    def __post_init__(self) -> None:
        positive("epsilon", self.epsilon)
        positive("noise_multiplier", self.noise_multiplier)
        positive("clip", self.clip, allow_none=False)
        probability("dp_delta", self.dp_delta)
        releases("rounds", self.rounds)


@dataclass(frozen=True)
class LabelRRParameters:
    """Parameters of `label_rr`."""

    epsilon: float | None = field(default=None, metadata={"help": EPSILON_HELP + " (gaussian, label_rr)"})

    def __post_init__(self) -> None:
        positive("epsilon", self.epsilon)


@dataclass(frozen=True)
class GaussianResidualParameters:
    """Parameters of `gaussian_r`: exactly one of ε or the noise multiplier."""

    epsilon: float | None = field(default=None, metadata={"help": EPSILON_HELP + " (gaussian, label_rr)"})
    dp_delta: float = field(default=1e-5, metadata={"help": DP_DELTA_HELP})
    noise_multiplier: float | None = field(default=None, metadata={"help": "gaussian noise σ relative to --clip "
                                                                           "(instead of --epsilon)"})
    residual_clip: float = field(default=10.0, metadata={"help": "L2 clip norm of each sample's whole r signal, "
                                                                 "all answer positions together (gaussian_r)"})
    # Each boosting round releases every sample's r once more (the config's `rounds`).
    rounds: int = field(default=1, metadata={"help": ROUNDS_HELP})

    def __post_init__(self) -> None:
        positive("epsilon", self.epsilon)
        positive("noise_multiplier", self.noise_multiplier)
        positive("residual_clip", self.residual_clip, allow_none=False)
        probability("dp_delta", self.dp_delta)
        releases("rounds", self.rounds)


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


@dataclass(frozen=True)
class HeCkksParameters:
    """Parameters of `he_ckks`: the CKKS ring and modulus chain, the packing, and the server's ridge fit."""

    ckks_poly_modulus_degree: int = field(default=8192, metadata={"help": "CKKS ring degree N"})
    # One level: the fit is one ciphertext-plaintext product.
    ckks_coeff_mod_bit_sizes: tuple[int, ...] = field(
        default=(60, 40, 60), metadata={"help": "CKKS coefficient modulus chain in bits, comma-separated"})
    ckks_scale_bits: int = field(default=40, metadata={"help": "CKKS scale 2^bits"})
    # Samples of Δ per ciphertext (coefficient packing): the upload is C·⌈n/b⌉ ciphertexts and
    # the reply C·⌈(k+1)/⌊N/b⌋⌉; 256 keeps both near 1-2 MB at n = 1,800, k = 128, N = 8192.
    he_block_samples: int = field(default=256, metadata={"help": "samples of Δ packed per ciphertext"})
    he_features: int = field(default=128, metadata={"help": "PCA dimensions of the server's label-free features"})
    he_ridge: float = field(default=1000.0, metadata={"help": "ridge penalty λ of the encrypted head fit"})

    def __post_init__(self) -> None:
        ring = self.ckks()  # validates the ring (128-bit security, levels, scale) without making a key
        if not 1 <= self.he_block_samples <= ring.coefficient_count:
            raise UserInputError(f"he_block_samples must be in 1..{ring.coefficient_count} (the ring degree), "
                                 f"got {self.he_block_samples}")
        if self.he_features < 1 or not (math.isfinite(self.he_ridge) and self.he_ridge > 0):
            raise UserInputError("he_features must be >= 1 and he_ridge positive")

    def ckks(self) -> CkksParameters:
        """The CKKS ring, modulus chain and scale."""
        return CkksParameters(self.ckks_poly_modulus_degree, tuple(self.ckks_coeff_mod_bit_sizes),
                              self.ckks_scale_bits)


# The one list of mechanism names (CLI choices, errors, docs and tests come from it), each
# with its parameters, in the order the CLI lists them.
MECHANISM_PARAMETERS: dict[str, type] = {
    "none": NoParameters,
    "gaussian": GaussianParameters,
    "label_rr": LabelRRParameters,
    "rotation_mask": NoParameters,
    "activation_noise": ActivationNoiseParameters,
    "int8_activations": NoParameters,
    ROTATION_MECHANISM: NoParameters,
    "he_ckks": HeCkksParameters,
    "gaussian_r": GaussianResidualParameters,
}


def parameter_fields() -> list[dataclasses.Field]:
    """Every mechanism parameter, once: the same name in two mechanisms must mean the same
    thing (same type and default), else the registry is inconsistent."""
    merged: dict[str, dataclasses.Field] = {}
    for parameters in MECHANISM_PARAMETERS.values():
        for item in dataclasses.fields(parameters):
            known = merged.setdefault(item.name, item)
            if (known.type, known.default) != (item.type, item.default):
                raise RuntimeError(f"mechanism parameter {item.name!r} is declared differently by two mechanisms")
    return list(merged.values())


def uses_epsilon(name: str) -> bool:
    """Whether the named mechanism takes a target ε (sweeps and audits vary ε only where it applies)."""
    return takes_epsilon(MECHANISM_PARAMETERS[name])


def takes_epsilon(parameters: type) -> bool:
    """Whether a mechanism parameter dataclass has a target ε."""
    return "epsilon" in {f.name for f in dataclasses.fields(parameters)}
