"""Device-side protections of what the device sends, chosen by name.

`MECHANISMS` is the one list of names (CLI choices, errors, docs and tests come from
it). `MechanismChain` composes several of them in stage order (labels, Δ,
activations, encryption) and is the `UploadTransform` the device role applies.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.errors import UserInputError
from protocol.messages import Message, Upload
from protocol.side_network import AdditiveSideNetwork
from secure_assist.mechanisms.activations import ActivationNoise, Int8Activations
from secure_assist.mechanisms.base import STAGES, Mechanism, MechanismSettings, PrivacyWarning
from secure_assist.mechanisms.delta import GaussianDelta, LabelRandomizedResponse, NoProtection, RotationMask
from secure_assist.mechanisms.he_ckks import HeCkksDelta

MECHANISMS: dict[str, type[Mechanism]] = {
    cls.name: cls
    for cls in (NoProtection, GaussianDelta, LabelRandomizedResponse, RotationMask, ActivationNoise,
                Int8Activations, HeCkksDelta)
}

__all__ = ["MECHANISMS", "Mechanism", "MechanismChain", "MechanismSettings", "PrivacyWarning"]


class MechanismChain:
    """Several mechanisms applied in stage order to each upload, before it leaves the device."""

    def __init__(self, names: tuple[str, ...] | list[str], settings: MechanismSettings = MechanismSettings()) -> None:
        names = tuple(names)
        unknown = [n for n in names if n not in MECHANISMS]
        if unknown or not names:
            raise UserInputError(f"unknown mechanism(s) {unknown or '(none given)'}; choose from {sorted(MECHANISMS)}")
        if len(set(names)) != len(names):
            raise UserInputError(f"mechanism listed twice in {list(names)}")
        if "none" in names and len(names) > 1:
            raise UserInputError("'none' cannot be combined with other mechanisms")
        ordered = sorted(names, key=lambda n: STAGES.index(MECHANISMS[n].stage))
        generators = [np.random.default_rng(s) for s in np.random.SeedSequence(settings.seed).spawn(len(ordered))]
        self.mechanisms: list[Mechanism] = [MECHANISMS[n](settings, g) for n, g in zip(ordered, generators)]

    @property
    def names(self) -> list[str]:
        """Mechanism names in application order."""
        return [m.name for m in self.mechanisms]

    def find(self, kind: type[Mechanism]) -> Mechanism | None:
        """The chain's mechanism of this class, if any."""
        return next((m for m in self.mechanisms if isinstance(m, kind)), None)

    def transform(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> list[Message]:
        """Apply every mechanism; the last one decides what is sent."""
        for mechanism in self.mechanisms[:-1]:
            upload = mechanism.apply(upload, labels, label_logits)
        return self.mechanisms[-1].transform(upload, labels, label_logits)

    def flush(self) -> list[Message]:
        """What the last mechanism held back."""
        return self.mechanisms[-1].flush()

    def restore(self, network: AdditiveSideNetwork) -> None:
        """Undo, on the device, the mechanisms' effect on the downloaded side network."""
        for mechanism in reversed(self.mechanisms):
            mechanism.restore(network)

    def describe(self) -> list[dict[str, Any]]:
        """One description per mechanism, in application order."""
        return [m.describe() for m in self.mechanisms]
