"""The training samples one device of a many-device run holds (its share of the partition)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

import numpy as np

from secure_assist.devices.partition import Partition

E = TypeVar("E")


def device_share(config: Any, train: list[E], n_classes: int | None = None) -> list[E]:
    """Device `config.device_index`'s share of `train` under `config.partition` over `config.devices`
    devices (all of `train` for one device); with `config.flip_labels` (a poisoning device) every
    label moves to the next class of `n_classes`."""
    if config.devices > 1:
        partition = Partition.parse(config.partition)
        labels = np.array([e.label for e in train]) if partition.needs_labels else None
        shares = partition.indices(len(train), config.devices, config.seed, labels)
        train = [train[i] for i in shares[config.device_index]]
    if config.flip_labels:
        train = [replace(e, label=(e.label + 1) % n_classes) for e in train]
    return train
