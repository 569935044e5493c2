"""What a device deploys next to the frozen backbone: a side output added to p_b.

Every training mode yields one (the side network φ, the CKKS mode's ridge head, the
generation mode's hidden-space correction, added to the next-token logits through the head; a
mechanism may wrap it in the map it applied to the uploads, e.g. the secret rotation of
`activation_rotation`; boosting rounds deploy the sum of their rounds' side outputs); the
safeguard, the model file and `predict` use only this interface, never a concrete
class. `SIDE_OUTPUTS` is the one list of kinds, used to rebuild a saved side output.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np
import torch

from protocol.modes.ckks_ridge.head import RidgeHead
from protocol.model.input_maps import ClippedInput, InputMapped, RotatedInput
from protocol.model.side_network import AdditiveSideNetwork, HiddenCorrection
from protocol.model.summed_side import SummedSide


class SideOutput(Protocol):
    """Maps pivot activations (n, L, d) to C values added to the backbone's p_b."""

    KIND: ClassVar[str]

    def __call__(self, activations: torch.Tensor) -> torch.Tensor:
        """(n, C) side values."""

    def eval(self) -> "SideOutput":
        """Inference mode (a torch module's eval)."""

    @property
    def n_outputs(self) -> int:
        """C."""

    def map_outputs_(self, matrix: np.ndarray) -> None:
        """Replace the output g(A) by g(A)·M in place (the safeguard's shrink is s·I; a
        mechanism that rotated the training targets undoes it with the inverse rotation)."""

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """(tensors, architecture) that `from_arrays` rebuilds it from."""


SIDE_OUTPUTS: dict[str, type] = {cls.KIND: cls for cls in (AdditiveSideNetwork, RidgeHead, HiddenCorrection,
                                                             RotatedInput, ClippedInput, SummedSide)}


def side_output_from_arrays(kind: str, state: dict[str, np.ndarray], architecture: dict[str, object]) -> SideOutput:
    """Rebuild a saved side output of a registered kind (unknown kinds are errors)."""
    if kind not in SIDE_OUTPUTS:
        raise ValueError(f"unknown side output {kind!r}; known: {sorted(SIDE_OUTPUTS)}")
    cls = SIDE_OUTPUTS[kind]
    if issubclass(cls, InputMapped):
        inner_kind, inner_state, inner_architecture, own_state, own_architecture = cls.split_arrays(state, architecture)
        inner = side_output_from_arrays(inner_kind, inner_state, inner_architecture)
        return cls.from_own(inner, own_state, own_architecture)
    if cls is SummedSide:  # each part is rebuilt by its own kind
        return SummedSide([side_output_from_arrays(*part) for part in SummedSide.split_arrays(state, architecture)])
    return cls.from_arrays(state, architecture)


def scale_side_output(side: SideOutput, factor: float) -> None:
    """Multiply the side output by `factor` (its last map is linear)."""
    side.map_outputs_(factor * np.eye(side.n_outputs))
