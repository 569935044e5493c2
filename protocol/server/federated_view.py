"""The FedAvg server's view: what it received and published, round by round, as safetensors.

`<updates_dir>/round_RRR/` holds every device's trained tensors of round RRR
(`node_<id>.safetensors`), or under secure aggregation only their weighted mean
(`aggregate.safetensors`), and the global model the round produced (`global.safetensors`;
`round_000` holds the initial one). The weight each device declared is in the metadata
(`weights`: {node id: weight}); it travels in clear under SecAgg+ too. The devices' tensors are
named as `protocol.server.federated_rounds.SHARED_NAMES`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from protocol.files import private_dir, write_atomic
from protocol.server.federated_rounds import SHARED_NAMES
from protocol.wire.codec import decode, encode

GLOBAL_FILE = "global.safetensors"
AGGREGATE_FILE = "aggregate.safetensors"
NODE_PREFIX = "node_"
WEIGHTS_KEY = "weights"
# A view file holds one side network's shared tensors: far below this, whatever the backbone.
MAX_VIEW_FILE_BYTES = 1 << 31


def round_dir(updates_dir: Path, server_round: int) -> Path:
    """Where round `server_round`'s view is kept."""
    return Path(updates_dir) / f"round_{server_round:03d}"


def save_tensors(path: Path, arrays: list[np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """The shared tensors, by name, as one safetensors file in a private folder."""
    private_dir(path.parent)
    write_atomic(path, encode(dict(zip(SHARED_NAMES, arrays)), metadata or {}))


def load_tensors(path: Path) -> tuple[list[np.ndarray], dict[str, str]]:
    """(shared tensors in `SHARED_NAMES` order, metadata) of one file of the view."""
    arrays, metadata = decode(Path(path).read_bytes(), max_bytes=MAX_VIEW_FILE_BYTES)
    return [arrays[name] for name in SHARED_NAMES], metadata


def rounds_recorded(updates_dir: Path) -> list[int]:
    """The rounds whose global model the view holds (0: the initial model), in order."""
    return sorted(int(p.name.split("_")[1]) for p in Path(updates_dir).glob("round_*") if (p / GLOBAL_FILE).is_file())


def global_model(updates_dir: Path, server_round: int) -> list[np.ndarray]:
    """The global tensors after `server_round` (0: the initial ones)."""
    return load_tensors(round_dir(updates_dir, server_round) / GLOBAL_FILE)[0]


def node_updates(updates_dir: Path, server_round: int) -> dict[int, list[np.ndarray]]:
    """Each device's trained tensors of a round, by node id (empty under secure aggregation)."""
    folder = round_dir(updates_dir, server_round)
    return {int(p.stem[len(NODE_PREFIX):]): load_tensors(p)[0] for p in sorted(folder.glob(f"{NODE_PREFIX}*"))}


def aggregate(updates_dir: Path, server_round: int) -> list[np.ndarray] | None:
    """The round's aggregate as secure aggregation revealed it (None without secure aggregation)."""
    path = round_dir(updates_dir, server_round) / AGGREGATE_FILE
    return load_tensors(path)[0] if path.is_file() else None


def declared_weights(updates_dir: Path, server_round: int) -> dict[int, float]:
    """The weight each device declared in a round, by node id."""
    folder = round_dir(updates_dir, server_round)
    for path in sorted(folder.glob("*.safetensors")):
        metadata = load_tensors(path)[1]
        if WEIGHTS_KEY in metadata:
            return {int(node): float(w) for node, w in json.loads(metadata[WEIGHTS_KEY]).items()}
    return {}
