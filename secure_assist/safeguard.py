"""The device's safeguard: never deploy a side output worse than the backbone alone.

The device holds out a validation split of its own training data (never uploaded),
and picks the shrink factor s in [0, 1] of the side output that maximizes validation
accuracy of argmax(p_b + s·g(A)); ties go to the smaller s, so s = 0 (the side output
dropped) whenever the side output does not help on the device's own data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from protocol.ridge_head import RidgeHead
from protocol.side_network import AdditiveSideNetwork

SHRINK_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))


@dataclass(frozen=True)
class ShrinkDecision:
    """What the safeguard chose and why."""

    factor: float
    validation_samples: int
    validation_accuracy_backbone: float
    validation_accuracy_unshrunk: float
    validation_accuracy_chosen: float

    @property
    def action(self) -> str:
        """'kept', 'shrunk' or 'dropped'."""
        return "dropped" if self.factor == 0 else "kept" if self.factor == 1 else "shrunk"


def choose_shrink(backbone_probs: np.ndarray, side_output: np.ndarray, labels: np.ndarray) -> ShrinkDecision:
    """The best factor on the validation split (smallest among ties)."""
    scores = [float(((backbone_probs + s * side_output).argmax(axis=1) == labels).mean()) for s in SHRINK_GRID]
    best = int(np.argmax(scores))  # argmax returns the first, i.e. the smallest factor, among ties
    return ShrinkDecision(factor=float(SHRINK_GRID[best]), validation_samples=len(labels),
                          validation_accuracy_backbone=scores[0], validation_accuracy_unshrunk=scores[-1],
                          validation_accuracy_chosen=scores[best])


def shrink_network(network: AdditiveSideNetwork | RidgeHead, factor: float) -> None:
    """Scale the side output by `factor` (its last map is linear: scaling the head's weights suffices)."""
    if isinstance(network, RidgeHead):
        network.scale_(factor)
        return
    with torch.no_grad():
        network.head.weight.mul_(factor)
        network.head.bias.mul_(factor)
