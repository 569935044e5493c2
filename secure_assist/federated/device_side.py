"""What a device keeps for federated averaging, under `<workdir>/device/` (never sent).

Its forward outputs are the `device_local` run's cache (`device/local_training/cache.sqlite`:
pivot states and Δ of its upload set), its training settings are its own config's, and each
round it appends what it did and what crossed its link to its own log.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from protocol.files import open_private_append, write_atomic
from protocol.model.side_network import SideNetworkShape
from protocol.server.cache import ActivationCache
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import CACHE_FILE
from secure_assist.training.workdir import DEVICE_DIR, LOCAL_TRAINING_DIR

TRAINING_FILE = "fedavg_training.json"
ROUNDS_FILE = "fedavg_rounds.jsonl"  # one line per local training round
TRAFFIC_FILE = "fedavg_traffic.jsonl"  # one line per message the device answered


def features(workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(pivot states (N, L, d), Δ (N, C)) of the device's upload set, from its local cache."""
    cache = ActivationCache(Path(workdir) / LOCAL_TRAINING_DIR / CACHE_FILE)
    try:
        _, activations, delta = cache.load_all()
    finally:
        cache.close()
    if len(delta) == 0:
        raise ValueError(f"device {workdir} holds no forward outputs: run its device_local start first")
    return activations, delta


def shape_of(activations: np.ndarray, delta: np.ndarray, training: ServerTraining) -> SideNetworkShape:
    """The side network these forward outputs train."""
    return SideNetworkShape(n_layers=activations.shape[1], hidden_size=activations.shape[2], rank=training.rank,
                            n_classes=delta.shape[1])


def save_training(workdir: Path, training: ServerTraining) -> None:
    """Keep the device's side-trainer settings where its Flower client reads them."""
    write_atomic(Path(workdir) / DEVICE_DIR / TRAINING_FILE, json.dumps(asdict(training)).encode())


def load_training(workdir: Path) -> ServerTraining:
    """The device's side-trainer settings (`save_training`)."""
    return ServerTraining(**json.loads((Path(workdir) / DEVICE_DIR / TRAINING_FILE).read_text()))


def append(workdir: Path, name: str, record: dict[str, Any]) -> None:
    """One line of a device log."""
    with open_private_append(Path(workdir) / DEVICE_DIR / name) as handle:
        handle.write((json.dumps(record) + "\n").encode())


def read_log(workdir: Path, name: str) -> list[dict[str, Any]]:
    """Every line of a device log (none before the first round)."""
    path = Path(workdir) / DEVICE_DIR / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
