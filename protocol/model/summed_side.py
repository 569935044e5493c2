"""The side output of boosting rounds: the sum of every round's side output as deployed.

Round k of `secure_assist.training.rounds` trains a side output g_k on the targets left
after the rounds before it, and the device deploys p_b + Σ_k g_k(A), each g_k at the factor
its safeguard chose. `SummedSide` holds those parts; each part keeps its own kind, so the
model file saves the parts' own tensors (prefixed `part<i>.`) and architectures, and the
registry of side outputs (`protocol.model.side_output`) rebuilds each part by its kind.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_PART = "part{}."
MAX_PARTS = 64  # far above any run's rounds: a model file naming more is refused, not rebuilt


class SummedSide(torch.nn.Module):
    """g(A) = Σ_k g_k(A) over the parts g_k (kind 'summed')."""

    KIND = "summed"

    def __init__(self, parts: list[Any]) -> None:
        super().__init__()
        if not 1 <= len(parts) <= MAX_PARTS:
            raise ValueError(f"a summed side output holds 1..{MAX_PARTS} parts, got {len(parts)}")
        if len({part.n_outputs for part in parts}) != 1:
            raise ValueError("the parts of a summed side output must give the same number of side values")
        self.parts = torch.nn.ModuleList(parts)

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        """(n, C): every part's side values, summed."""
        return torch.stack([part(activations) for part in self.parts]).sum(dim=0)

    @property
    def n_outputs(self) -> int:
        """C, the parts' number of side values."""
        return self.parts[0].n_outputs

    def map_outputs_(self, matrix: np.ndarray) -> None:
        """(Σ_k g_k)·M = Σ_k (g_k·M): the map is linear, so every part takes it."""
        for part in self.parts:
            part.map_outputs_(matrix)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """Every part's tensors under its prefix, and the parts' kinds and architectures in order."""
        tensors: dict[str, np.ndarray] = {}
        parts = []
        for index, part in enumerate(self.parts):
            state, architecture = part.to_arrays()
            tensors.update({_PART.format(index) + name: value for name, value in state.items()})
            parts.append({"kind": part.KIND, "architecture": architecture})
        return tensors, {"parts": parts}

    @staticmethod
    def split_arrays(state: dict[str, np.ndarray], architecture: dict[str, object]
                     ) -> list[tuple[str, dict[str, np.ndarray], dict[str, object]]]:
        """`to_arrays` output taken apart: (kind, tensors, architecture) of each part, in order; the
        registry of side outputs rebuilds each. A tensor that belongs to no part is an error."""
        parts = architecture.get("parts")
        if not isinstance(parts, list) or not 1 <= len(parts) <= MAX_PARTS or not all(
                isinstance(p, dict) and isinstance(p.get("kind"), str) and isinstance(p.get("architecture"), dict)
                for p in parts):
            raise ValueError("a summed side output needs 'parts': a list of {kind, architecture}")
        prefixes = [_PART.format(index) for index in range(len(parts))]
        stray = [name for name in state if not any(name.startswith(prefix) for prefix in prefixes)]
        if stray:
            raise ValueError(f"tensors {stray[:3]} belong to no part of the summed side output")
        return [(part["kind"], {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                 part["architecture"]) for part, prefix in zip(parts, prefixes)]
