"""The one list of references: the baselines every server-assisted run is measured against.

A reference is not a training mode (it does not speak the side-tuning protocol); each has
one entry point per task kind it covers, which `audit`, `compare` and the benchmarks call,
and, where it scores a classification task, one call with the same arguments for every
reference (`Reference.scored_run`), from which `compare` builds its rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from protocol.data.tasks import Example, TaskSpec
from protocol.errors import UserInputError
from protocol.model.backbone import Backbone
from secure_assist.references.local_lora import LoraRun, LoraSettings, local_lora_sft, run_local_lora
from secure_assist.references.mobillm import MobiLLMRun, measure_generation_upload, run_mobillm
from secure_assist.references.split_learning import run_split_learning


class ScoredRun(Protocol):
    """A reference trained on a classification task and scored on its evaluation split."""

    probabilities: np.ndarray  # (n_eval, C)
    device_seconds: float
    bytes_up: int
    bytes_down: int
    server_seconds: float
    device_forwards_after_epoch1: int


# (backbone, task, train, evaluate, workdir, epochs, seed, progress) -> ScoredRun
ScoredEntryPoint = Callable[[Backbone, TaskSpec, list[Example], list[Example], Path, int, int, bool], ScoredRun]


@dataclass(frozen=True)
class Reference:
    """A baseline: what it is, what reaches a server, and its entry point by task kind."""

    name: str
    description: str
    uploads: str  # what a server receives ("nothing": trained on the device)
    entry_points: Mapping[str, Callable[..., Any]]
    scored: ScoredEntryPoint | None = None  # None: the reference is not scored on an evaluation split

    def entry_point(self, kind: str) -> Callable[..., Any]:
        """The reference's one entry point for a task kind ('classification', 'generation')."""
        if kind not in self.entry_points:
            raise UserInputError(f"reference {self.name!r} covers {sorted(self.entry_points)} tasks, not {kind!r}")
        return self.entry_points[kind]

    def scored_run(self) -> ScoredEntryPoint:
        """The classification run that `compare` scores; refused for a reference that has none."""
        if self.scored is None:
            raise UserInputError(f"reference {self.name!r} is not scored on an evaluation split; "
                                 f"scored references: {scored_references()}")
        return self.scored


def _scored_local_lora(backbone: Backbone, task: TaskSpec, train: list[Example], evaluate: list[Example],
                       workdir: Path, epochs: int, seed: int, progress: bool) -> LoraRun:
    # LoRA keeps its own recipe (LoraSettings): one epoch, as in the audit's local_lora row.
    return run_local_lora(backbone, task, train, evaluate, LoraSettings(seed=seed), progress)


def _scored_mobillm(backbone: Backbone, task: TaskSpec, train: list[Example], evaluate: list[Example],
                    workdir: Path, epochs: int, seed: int, progress: bool) -> MobiLLMRun:
    # The run's epochs: MobiLLM re-sends every sample each epoch where PAE trains from its cache.
    return run_mobillm(backbone, task, train, evaluate, workdir, epochs=epochs, seed=seed, progress=progress)


REFERENCES: dict[str, Reference] = {ref.name: ref for ref in (
    Reference("local_lora", "LoRA (peft, r = 8 on the attention projections) trained on the device", "nothing",
              {"classification": run_local_lora, "generation": local_lora_sft}, _scored_local_lora),
    Reference("mobillm", "MobiLLM-style side tuning: the server trains the side network with cross-entropy",
              "every token's activation at every layer and the labels, each epoch",
              {"classification": run_mobillm, "generation": measure_generation_upload}, _scored_mobillm),
    Reference("split_learning", "split learning: the server runs the layers above a cut and LoRA-tunes them",
              "the cut layer's activations of every token, and gradients back", {"classification": run_split_learning}),
)}


def scored_references() -> list[str]:
    """The references `compare` can add as rows."""
    return [name for name, ref in REFERENCES.items() if ref.scored is not None]


def get_reference(name: str) -> Reference:
    """A registered reference; unknown names list the known ones."""
    if name not in REFERENCES:
        raise UserInputError(f"unknown reference {name!r}; choose from {', '.join(REFERENCES)}")
    return REFERENCES[name]
