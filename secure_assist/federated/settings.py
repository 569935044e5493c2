"""The settings of a federated-averaging run (Flower), apart from Flower so that the
configuration and the command line can read them without importing it."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import UserInputError

# plain: Flower's FedAvg; dp: central DP (client-side fixed clipping, server-side Gaussian noise);
# secagg: SecAgg+, so that the server only learns the sum of the updates.
VARIANTS = ("plain", "dp", "secagg")


@dataclass(frozen=True)
class FedAvgSettings:
    """FedAvg of device-local side networks: R rounds of E local epochs on every device.

    `dp`: each device clips its update to `clipping_norm` (L2, over every shared tensor) and the
    server adds Gaussian noise of std `noise_multiplier` · `clipping_norm` / m to the mean of the m
    updates (Flower's `DifferentialPrivacyClientSideFixedClipping`); the updates are averaged with
    equal weights, so that one device moves the mean by at most `clipping_norm` / m, and (ε, δ) is
    accounted over the rounds for user-level DP (`delta`). `secagg`: SecAgg+ with `secagg_shares`
    key shares per device, `secagg_threshold` of them enough to unmask, and the update values
    clipped to ±`secagg_clipping_range` before quantization (Flower's `SecAggPlusWorkflow`).
    """

    variant: str = "plain"
    rounds: int = 10
    local_epochs: int = 2
    fraction_train: float = 1.0  # devices sampled per round (the DP accounting's sampling rate)
    noise_multiplier: float = 1.0
    clipping_norm: float = 0.5
    delta: float = 1e-5
    secagg_shares: int = 3
    secagg_threshold: int = 2
    secagg_clipping_range: float = 8.0
    cpus_per_client: float = 1.0  # Ray resources per simulated device: 2 cores run 2 devices at a time

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise UserInputError(f"FedAvg variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        for name in ("rounds", "local_epochs", "secagg_shares", "secagg_threshold"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserInputError(f"FedAvg {name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("noise_multiplier", "clipping_norm", "secagg_clipping_range", "cpus_per_client"):
            if not getattr(self, name) > 0:
                raise UserInputError(f"FedAvg {name} must be positive, got {getattr(self, name)!r}")
        if not 0 < self.fraction_train <= 1 or not 0 < self.delta < 1:
            raise UserInputError(f"FedAvg fraction_train must be in (0, 1] and delta in (0, 1), got "
                                 f"{self.fraction_train} and {self.delta}")
        if self.secagg_threshold > self.secagg_shares:
            raise UserInputError(f"SecAgg+ threshold {self.secagg_threshold} exceeds its {self.secagg_shares} shares")
