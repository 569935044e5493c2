"""The one list of references: the baselines every server-assisted run is measured against.

A reference is not a training mode (it does not speak the side-tuning protocol); each has
one entry point per task kind it covers, which `audit`, `compare` and the benchmarks call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from protocol.errors import UserInputError
from secure_assist.references.local_lora import local_lora_sft, run_local_lora
from secure_assist.references.mobillm import measure_generation_upload, run_mobillm
from secure_assist.references.split_learning import run_split_learning


@dataclass(frozen=True)
class Reference:
    """A baseline: what it is, what reaches a server, and its entry point by task kind."""

    name: str
    description: str
    uploads: str  # what a server receives ("nothing": trained on the device)
    entry_points: Mapping[str, Callable[..., Any]]

    def entry_point(self, kind: str) -> Callable[..., Any]:
        """The reference's one entry point for a task kind ('classification', 'generation')."""
        if kind not in self.entry_points:
            raise UserInputError(f"reference {self.name!r} covers {sorted(self.entry_points)} tasks, not {kind!r}")
        return self.entry_points[kind]


REFERENCES: dict[str, Reference] = {ref.name: ref for ref in (
    Reference("local_lora", "LoRA (peft, r = 8 on the attention projections) trained on the device", "nothing",
              {"classification": run_local_lora, "generation": local_lora_sft}),
    Reference("mobillm", "MobiLLM-style side tuning: the server trains the side network with cross-entropy",
              "every token's activation at every layer and the labels, each epoch",
              {"classification": run_mobillm, "generation": measure_generation_upload}),
    Reference("split_learning", "split learning: the server runs the layers above a cut and LoRA-tunes them",
              "the cut layer's activations of every token, and gradients back", {"classification": run_split_learning}),
)}
