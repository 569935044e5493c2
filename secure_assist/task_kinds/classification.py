"""Classification: one pivot per text, C label words, accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.model.backbone import load_backbone
from protocol.device.forward_device import DeviceRole
from protocol.device.features import ForwardCachingDevice
from protocol.model.side_output import SideOutput
from protocol.data.tasks import Example, TaskSpec
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data
from secure_assist.task_kinds.base import TaskKind
from secure_assist.mechanisms import MechanismChain
from secure_assist.training.safeguard import choose_shrink, drop_unvalidated, shrink_network


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Share of argmax predictions equal to the labels."""
    return float((probabilities.argmax(axis=1) == labels).mean())


class ClassificationKind(TaskKind):
    """SST-2 or a custom labelled file; the side output is added to p_b."""

    name = "classification"

    def data(self, config: FinetuneConfig) -> tuple[TaskSpec, list[Example], list[Example]]:
        return resolve_data(config)

    def make_device(self, config: FinetuneConfig, task: TaskSpec, mechanisms: MechanismChain | None,
                    progress: bool, datasets: tuple[list[Example], ...] = ()) -> DeviceRole:
        """The device role, with its forward cache when `reuse_forwards` is set or `rounds` > 1: one entry per
        dataset (training set, evaluation set), whatever subsets of them are asked for (the
        upload set and the safeguard's validation split share the training set's)."""
        settings = dict(layers=config.layers, payload_dtype=config.payload_dtype, batch_size=config.device_batch_size,
                        progress=progress, transform=mechanisms)
        # Boosting rounds reread round 1's passes (secure_assist.training.rounds): the cache is on for them.
        if config.reuse_forwards or config.rounds > 1:
            return ForwardCachingDevice(load_backbone(config.model), task, pools=datasets, **settings)
        return DeviceRole(load_backbone(config.model), task, **settings)

    def safeguard(self, device: DeviceRole, side: SideOutput, validation: list[Example] | None,
                  seed: int = 0, deployed: SideOutput | None = None) -> dict[str, Any] | None:
        """Shrink or drop the side output unless it is measurably better than the backbone on validation
        (`deployed`: better than p_b plus that, the side output a boosting round adds to)."""
        if validation is None:
            return None
        if not validation:
            return drop_unvalidated(side)
        backbone_probs, combined = device.scores(validation, side)
        beaten = backbone_probs if deployed is None else device.scores(validation, deployed)[1]
        decision = choose_shrink(beaten, combined - backbone_probs, np.array([e.label for e in validation]), seed)
        shrink_network(side, decision.factor)
        return decision.to_json()

    def evaluate(self, device: DeviceRole, config: FinetuneConfig, side: SideOutput,
                 evaluate: list[Example]) -> dict[str, Any]:
        labels = np.array([e.label for e in evaluate])
        backbone_probs, combined = device.scores(evaluate, side)
        return {"zero_shot_accuracy": accuracy(backbone_probs, labels), "accuracy": accuracy(combined, labels)}
