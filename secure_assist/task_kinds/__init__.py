"""Task kinds, chosen by the run's task: `TASK_KINDS` is the one list (modes name the kind
they train, and the run path asks the kind for data, device, safeguard and evaluation)."""

from __future__ import annotations

from protocol.data.instructions import GENERATION_TASK
from secure_assist.config import FinetuneConfig
from secure_assist.task_kinds.base import TaskKind
from secure_assist.task_kinds.classification import ClassificationKind
from secure_assist.task_kinds.generation import GenerationKind

TASK_KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (ClassificationKind(), GenerationKind())}

__all__ = ["TASK_KINDS", "TaskKind", "task_kind"]


def task_kind(config: FinetuneConfig) -> TaskKind:
    """The kind of the configured task: `generation`, or classification for every other task."""
    return TASK_KINDS[GenerationKind.name if config.task == GENERATION_TASK else ClassificationKind.name]
