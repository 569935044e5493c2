"""Device-side protections of what the device sends, chosen by name.

`MECHANISMS` maps each name of the one list of names
(`secure_assist.mechanism_parameters.MECHANISM_PARAMETERS`: CLI choices, errors, docs and
tests come from it) to its class. Each mechanism owns a typed parameter dataclass (defined
in `secure_assist.mechanism_parameters`, which the CLI imports without torch);
`parameter_fields` merges their fields (the config keys and CLI flags are generated from
it: a field shared by several mechanisms, such as `epsilon`, is one key).
`MechanismChain` composes several mechanisms in stage order (labels, Δ, activations,
encryption), checks that each supports the run's training mode, and is the
`UploadTransform` the device role applies.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from protocol.errors import UserInputError
from protocol.wire.messages import Message, Upload
from protocol.model.side_output import SideOutput
from secure_assist.mechanisms.activations import ActivationNoise, ActivationRotation, Int8Activations
from secure_assist.mechanisms.base import STAGES, DpClaim, Mechanism, ModeTraits, PrivacyWarning
from secure_assist.mechanisms.delta import (
    GaussianDelta, GaussianResidual, LabelRandomizedResponse, NoProtection, RotationMask,
)
from secure_assist.mechanisms.he_ckks import HeCkksDelta
from secure_assist.mechanism_parameters import MECHANISM_PARAMETERS, parameter_fields

MECHANISMS: dict[str, type[Mechanism]] = {
    cls.name: cls
    for cls in (NoProtection, GaussianDelta, LabelRandomizedResponse, RotationMask, ActivationNoise,
                Int8Activations, ActivationRotation, HeCkksDelta, GaussianResidual)
}

# The classes must name the mechanisms of the light list, with the same parameters: the CLI's
# flags and the config keys come from that list, the runs from these classes.
if [(name, cls.Parameters) for name, cls in MECHANISMS.items()] != list(MECHANISM_PARAMETERS.items()):
    raise RuntimeError("secure_assist.mechanisms.MECHANISMS and mechanism_parameters.MECHANISM_PARAMETERS disagree")

__all__ = ["MECHANISMS", "DpClaim", "Mechanism", "MechanismChain", "PrivacyWarning", "parameter_fields"]


def mechanism_parameters(cls: type[Mechanism], values: Mapping[str, Any]) -> Any:
    """The mechanism's parameter dataclass from a flat mapping (keys of other mechanisms ignored)."""
    names = {item.name for item in dataclasses.fields(cls.Parameters)}
    parameters = cls.Parameters(**{k: v for k, v in values.items() if k in names})
    cls.check(parameters)
    return parameters


def check_chain(names: tuple[str, ...] | list[str], mode: ModeTraits | None = None) -> list[type[Mechanism]]:
    """The mechanism classes of a composition in stage order; unknown names, repeats,
    'none' with others, and a mechanism that does not support `mode` are one-line errors."""
    names = tuple(names)
    unknown = [n for n in names if n not in MECHANISMS]
    if unknown or not names:
        raise UserInputError(f"unknown mechanism(s) {unknown or '(none given)'}; choose from {sorted(MECHANISMS)}")
    if len(set(names)) != len(names):
        raise UserInputError(f"mechanism listed twice in {list(names)}")
    if "none" in names and len(names) > 1:
        raise UserInputError("'none' cannot be combined with other mechanisms")
    classes = sorted((MECHANISMS[n] for n in names), key=lambda cls: STAGES.index(cls.stage))
    for cls in classes:
        if mode is not None and cls.name in mode.refused_mechanisms:
            raise UserInputError(f"training mode {mode.name!r} refuses mechanism {cls.name!r}: "
                                 f"{mode.refused_mechanisms[cls.name]}")
        if mode is not None and not cls.supports(mode):
            raise UserInputError(f"mechanism {cls.name!r} does not support training mode {mode.name!r} "
                                 f"(it supports {cls.supported_modes()})")
    return classes


class MechanismChain:
    """Several mechanisms applied in stage order to each upload, before it leaves the device.

    Building a chain validates names, parameters and the mode, and has no side effects
    (no keys, no warnings): it is also how a configuration is checked before a run.
    """

    def __init__(self, names: tuple[str, ...] | list[str], values: Mapping[str, Any] | None = None,
                 seed: int | None = None, mode: ModeTraits | None = None) -> None:
        classes = check_chain(names, mode)
        generators = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(classes))]
        self.mechanisms: list[Mechanism] = [cls(mechanism_parameters(cls, values or {}), rng)
                                            for cls, rng in zip(classes, generators)]

    @property
    def names(self) -> list[str]:
        """Mechanism names in application order."""
        return [m.name for m in self.mechanisms]

    @property
    def deterministic(self) -> bool:
        """Whether every mechanism's output is a fixed function of the upload (resumable uploads)."""
        return all(m.deterministic for m in self.mechanisms)

    def stage(self, name: str) -> Mechanism | None:
        """The chain's mechanism of a stage (e.g. 'encrypt'), if any."""
        return next((m for m in self.mechanisms if m.stage == name), None)

    def transform(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> list[Message]:
        """Apply every mechanism; the last one decides what is sent."""
        for mechanism in self.mechanisms[:-1]:
            upload = mechanism.apply(upload, labels, label_logits)
        return self.mechanisms[-1].transform(upload, labels, label_logits)

    def flush(self) -> list[Message]:
        """What the last mechanism held back."""
        return self.mechanisms[-1].flush()

    def restore(self, side: SideOutput) -> SideOutput:
        """The deployable side output: every mechanism's effect undone on the device, last first."""
        for mechanism in reversed(self.mechanisms):
            side = mechanism.restore(side)
        return side

    def claims(self) -> list[tuple[str, DpClaim]]:
        """(mechanism name, DP claim) of every mechanism that makes one."""
        return [(m.name, claim) for m in self.mechanisms if (claim := m.claim()) is not None]

    def describe(self) -> list[dict[str, Any]]:
        """One description per mechanism, in application order."""
        return [m.describe() for m in self.mechanisms]
