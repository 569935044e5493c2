"""What every protection mechanism is: a device-side transform of the outgoing upload.

A mechanism sees the plain `Upload` (and the device-only labels and label logits)
before anything leaves the device, returns what is sent instead, and declares what it
protects, its typed parameters, the training modes it supports and its DP claim.
Mechanisms that change what the server learns from (e.g. a secret rotation of Δ or of the
activations) also undo their effect on the downloaded side output, on the device.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from protocol.errors import PrivacyWarning, UserInputError
from protocol.modes.generation.messages import GenerationUpload
from protocol.model.input_maps import clip_rows  # noqa: F401  (re-exported: the Δ mechanisms clip with it too)
from protocol.wire.messages import Message, Upload
from protocol.model.side_output import SideOutput
from secure_assist.mechanism_parameters import NoParameters, takes_epsilon


UploadT = TypeVar("UploadT", Upload, GenerationUpload)


# The training mode (protocol.modes.registry.MODES) that needs a particular mechanism by name, and
# the generation mode (the only one that takes `gaussian_r`).
CKKS_RIDGE_MODE, GENERATION_MODE = "ckks_ridge", "generation"
# Task kinds (secure_assist.task_kinds.TASK_KINDS) by name: mechanisms declare the kinds whose uploads they transform.
CLASSIFICATION_KIND, GENERATION_KIND = "classification", "generation"


class ModeTraits(Protocol):
    """What a mechanism needs to know of a training mode (protocol.modes.registry.TrainingMode)."""

    name: str
    uploads: bool  # False: nothing leaves the device
    task_kind: str  # CLASSIFICATION_KIND or GENERATION_KIND: the uploads it sends
    refused_mechanisms: dict[str, str]  # mechanism name -> why the mode cannot run it (one line)

# What a DP claim protects: the released Δ (gaussian, label_rr), the released activations,
# or the generation mode's released r (gaussian_r). Each names the upload field it covers.
DELTA_TARGET, ACTIVATIONS_TARGET, RESIDUAL_TARGET = "delta", "activations", "residual"
DP_TARGETS = (DELTA_TARGET, ACTIVATIONS_TARGET, RESIDUAL_TARGET)


@dataclass(frozen=True)
class DpClaim:
    """A mechanism's formal guarantee: (ε, δ)-DP per sample of one released field."""

    target: str  # one of DP_TARGETS: the upload field the audit's DP check attacks
    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if self.target not in DP_TARGETS:
            raise ValueError(f"unknown DP claim target {self.target!r}")


# Order in a composition: labels are randomized before Δ is formed, Δ is noised or
# masked before activations are touched, and encryption comes last.
STAGES = ("label", "delta", "activations", "encrypt")


class Mechanism:
    """Base class: subclasses set the class attributes and override `apply`.

    Construction has no side effects (no key generation, no warnings): building a chain
    validates a configuration cheaply; costs and warnings come with the first upload.
    """

    name: ClassVar[str] = ""
    stage: ClassVar[str] = "delta"
    # The mechanism's own typed parameters; config keys and CLI flags are generated from its fields.
    Parameters: ClassVar[type] = NoParameters
    # The training modes this mechanism works in, by name; None: every mode that uploads (a
    # transform of the upload means nothing where nothing is uploaded) a task kind of `task_kinds`.
    modes: ClassVar[tuple[str, ...] | None] = None
    # The task kinds whose uploads the mechanism transforms (a Δ mechanism has no Δ to protect
    # in a generation upload).
    task_kinds: ClassVar[tuple[str, ...]] = (CLASSIFICATION_KIND,)
    # Whether the output is a fixed function of the upload (no randomness, no secret): only then
    # may an interrupted network upload be resumed, re-sending a batch without a second release.
    deterministic: ClassVar[bool] = False
    protects: ClassVar[str] = ""
    guarantee: ClassVar[str] = ""
    # The released field a DP claim covers (one of DP_TARGETS), None without one.
    dp_target: ClassVar[str | None] = None
    # Whether the claim is label-DP (neighbours share the input and differ in the label) rather than
    # replace-one (any sample may become any other): the DP check's neighbours must respect it.
    label_dp: ClassVar[bool] = False

    # Parameters that must be given (not None) when the mechanism is chosen.
    required: ClassVar[tuple[str, ...]] = ()

    def __init__(self, parameters: Any, rng: np.random.Generator) -> None:
        self.check(parameters)
        self.parameters = parameters
        self.rng = rng

    @property
    def releases(self) -> int:
        """How often a run releases each sample's protected signal: once (a mechanism whose claim covers boosting
        rounds releases it once per round)."""
        return 1

    @classmethod
    def uses_epsilon(cls) -> bool:
        """Whether the mechanism takes a target ε (sweeps vary ε only where it applies)."""
        return takes_epsilon(cls.Parameters)

    @classmethod
    def supports(cls, mode: ModeTraits) -> bool:
        """Whether the mechanism works in this training mode."""
        if mode.task_kind not in cls.task_kinds or cls.name in mode.refused_mechanisms:
            return False
        return mode.uploads if cls.modes is None else mode.name in cls.modes

    @classmethod
    def supported_modes(cls) -> str:
        """The modes `supports` accepts, in words (for errors)."""
        if cls.modes is not None:
            return ", ".join(cls.modes)
        return f"every {' or '.join(cls.task_kinds)} mode that uploads"

    @classmethod
    def check(cls, parameters: Any) -> None:
        """Requirements of a chosen mechanism beyond each value's range (e.g. ε given)."""
        missing = [name for name in cls.required if getattr(parameters, name) is None]
        if missing:
            raise UserInputError(f"mechanism {cls.name!r} needs {' and '.join(missing)}")

    def apply(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> Upload:
        """The protected upload (subclasses)."""
        return upload

    def transform(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> list[Message]:
        """The messages sent instead of `upload` (one protected upload by default)."""
        return [self.apply(upload, labels, label_logits)]

    def flush(self) -> list[Message]:
        """Messages held back until every batch was seen (none by default)."""
        return []

    def restore(self, side: SideOutput) -> SideOutput:
        """The deployable side output: undo, on the device, what the mechanism did to the
        training targets or inputs (the side output unchanged by default; it may be wrapped)."""
        return side

    def claim(self) -> DpClaim | None:
        """The formal DP guarantee, if any (valid once the mechanism has seen an upload)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Name, what is protected, the formal guarantee and its parameters (for summaries)."""
        return {"name": self.name, "protects": self.protects, "guarantee": self.guarantee}


def with_delta(upload: Upload, delta: np.ndarray) -> Upload:
    """The same upload with a new Δ."""
    return Upload(sample_ids=upload.sample_ids, activations=upload.activations,
                  delta=np.ascontiguousarray(delta, dtype=np.float32), layers=upload.layers)


def with_activations(upload: UploadT, activations: np.ndarray) -> UploadT:
    """The same upload (classification or generation) with new activations, kept in the payload dtype."""
    return replace(upload, activations=np.ascontiguousarray(activations.astype(upload.activations.dtype)))


def warn_unprotected(what: str) -> None:
    """Emit the PrivacyWarning of a run that sends `what` in the clear."""
    warnings.warn(f"mechanism 'none': {what} sent to the server unprotected", PrivacyWarning, stacklevel=3)
