"""Poisoning by one member: what one label-flipping device costs the honest devices.

A many-device setting runs twice under the same row producer (pooled PAE, FedAvg, or
`device_local` as the control where nobody shares anything): once clean, once with device
`poisoner` flipping every training label (`flip_labels`: its uploads' Δ and its local updates
are then label-flipped). The honest devices are the others; each deploys what it received
behind its own safeguard and is scored on the common evaluation split, so their accuracy is
what poisoning costs a user.

Reported: the honest devices' accuracy (mean, 10th percentile, minimum) in both runs and the
paired difference (poisoned minus clean, device by device) with a bootstrap 95% CI over the
honest devices *(choice: the CI says how the devices spread; the runs share one training seed,
whose own randomness it does not cover)*. The poisoner's own accuracy stands apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from protocol.errors import UserInputError
from secure_assist.config import FinetuneConfig
from secure_assist.metrics import paired_difference
from secure_assist.training.summary import RunSummary

# A row producer: every device's run of a setting from the devices' configs, summaries in the same order
# (e.g. `lambda configs: run_pooled(configs).summaries`).
RowProducer = Callable[[list[FinetuneConfig]], list[RunSummary]]
POISONER = 0
CLEAN, POISONED = "clean", "poisoned"


def device_configs(config: FinetuneConfig, workdir: Path | str, poisoner: int | None) -> list[FinetuneConfig]:
    """Each device's config of `config`'s many-device setting, in `workdir/device_<i>`;
    device `poisoner` (None: none) flips its labels."""
    return [replace(config, device_index=i, flip_labels=i == poisoner, workdir=str(Path(workdir) / f"device_{i}"))
            for i in range(config.devices)]


def accuracy_spread(accuracies: np.ndarray) -> dict[str, float]:
    """Mean, 10th percentile and minimum of per-device accuracies."""
    return {"mean": float(np.mean(accuracies)), "p10": float(np.percentile(accuracies, 10)),
            "min": float(np.min(accuracies))}


def poisoning_effect(config: FinetuneConfig, produce: RowProducer, workdir: Path | str, poisoner: int = POISONER,
                     seed: int = 0) -> dict[str, Any]:
    """The honest devices' accuracy with and without device `poisoner` flipping its labels,
    under the row producer `produce`; the runs go to `workdir/clean` and `workdir/poisoned`."""
    if config.devices < 2:
        raise UserInputError("poisoning needs at least two devices: one poisoner and an honest one")
    if not 0 <= poisoner < config.devices:
        raise UserInputError(f"poisoner device {poisoner} is not one of the {config.devices} devices")
    honest = [i for i in range(config.devices) if i != poisoner]
    accuracy: dict[str, np.ndarray] = {}
    for run, flipped in ((CLEAN, None), (POISONED, poisoner)):
        summaries = produce(device_configs(config, Path(workdir) / run, flipped))
        if len(summaries) != config.devices:
            raise ValueError(f"the row producer returned {len(summaries)} summaries for {config.devices} devices")
        accuracy[run] = np.array([s.metrics["accuracy"] for s in summaries])
    difference = paired_difference(accuracy[POISONED][honest], accuracy[CLEAN][honest], seed)
    return {"devices": config.devices, "partition": config.partition, "poisoner": poisoner,
            "honest_devices": len(honest),
            **{run: {"honest_accuracy": accuracy_spread(values[honest]),
                     "poisoner_accuracy": float(values[poisoner])} for run, values in accuracy.items()},
            "honest_accuracy_change": {"mean": difference["difference"], "ci95": difference["ci95"]},
            "per_device_accuracy": {run: values.tolist() for run, values in accuracy.items()}}
