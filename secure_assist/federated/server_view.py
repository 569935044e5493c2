"""What the FedAvg server sees, kept as safetensors under its updates directory.

`RecordingStrategy` wraps the strategy the server runs (Flower's FedAvg, or its DP wrapper
around it) and writes what reaches `aggregate_fit`: every device's trained tensors of the
round (`round_RRR/node_<id>.safetensors`), or under SecAgg+, where Flower's workflow hands
the strategy only the unmasked sum, that aggregate alone (`round_RRR/aggregate.safetensors`).
The weights each device declared travel in clear in both cases and are kept in the metadata.
It also writes the global model the round produced (`round_RRR/global.safetensors`;
`round_000` is the initial one), which every device downloads anyway.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.common import FitRes, Parameters, Scalar, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from protocol.files import private_dir, write_atomic
from protocol.wire.codec import decode, encode
from secure_assist.federated.shared_weights import SHARED_NAMES

GLOBAL_FILE = "global.safetensors"
AGGREGATE_FILE = "aggregate.safetensors"
NODE_PREFIX = "node_"
WEIGHTS_KEY = "weights"  # metadata: {node id: declared weight} of the round


def round_dir(updates_dir: Path, server_round: int) -> Path:
    """Where round `server_round`'s view is kept."""
    return Path(updates_dir) / f"round_{server_round:03d}"


def save_tensors(path: Path, arrays: list[np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """The shared tensors, by name, as one safetensors file."""
    private_dir(path.parent)
    write_atomic(path, encode(dict(zip(SHARED_NAMES, arrays)), metadata or {}))


def load_tensors(path: Path) -> tuple[list[np.ndarray], dict[str, str]]:
    """(shared tensors in `SHARED_NAMES` order, metadata) of a file of the view."""
    arrays, metadata = decode(Path(path).read_bytes(), max_bytes=1 << 31)
    return [arrays[name] for name in SHARED_NAMES], metadata


def rounds_recorded(updates_dir: Path) -> list[int]:
    """The rounds of the view (0: the initial model), in order."""
    return sorted(int(p.name.split("_")[1]) for p in Path(updates_dir).glob("round_*") if (p / GLOBAL_FILE).is_file())


def node_updates(updates_dir: Path, server_round: int) -> dict[int, list[np.ndarray]]:
    """Each device's trained tensors of a round, by node id (empty under SecAgg+)."""
    folder = round_dir(updates_dir, server_round)
    return {int(p.stem[len(NODE_PREFIX):]): load_tensors(p)[0] for p in sorted(folder.glob(f"{NODE_PREFIX}*"))}


class RecordingStrategy(Strategy):
    """Delegates to `strategy` and records what the server receives and publishes."""

    def __init__(self, strategy: Strategy, updates_dir: Path, secure_aggregation: bool) -> None:
        super().__init__()
        self.strategy = strategy
        self.updates_dir = private_dir(Path(updates_dir))
        self.secure_aggregation = secure_aggregation

    def __repr__(self) -> str:
        return f"RecordingStrategy({self.strategy!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The wrapped strategy's initial model, recorded as round 0."""
        parameters = self.strategy.initialize_parameters(client_manager)
        if parameters is not None:
            save_tensors(round_dir(self.updates_dir, 0) / GLOBAL_FILE, parameters_to_ndarrays(parameters))
        return parameters

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        """As the wrapped strategy."""
        return self.strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Record the round's updates (or their sum), aggregate, record the new global model."""
        folder = round_dir(self.updates_dir, server_round)
        weights = json.dumps({str(proxy.node_id): res.num_examples for proxy, res in results})
        if self.secure_aggregation and results:
            # SecAgg+ gives every result the same unmasked aggregate: that is all the server learns.
            save_tensors(folder / AGGREGATE_FILE, parameters_to_ndarrays(results[0][1].parameters),
                         {WEIGHTS_KEY: weights})
        else:
            for proxy, res in results:
                save_tensors(folder / f"{NODE_PREFIX}{proxy.node_id}.safetensors",
                             parameters_to_ndarrays(res.parameters), {WEIGHTS_KEY: weights})
        parameters, metrics = self.strategy.aggregate_fit(server_round, results, failures)
        if parameters is not None:
            save_tensors(folder / GLOBAL_FILE, parameters_to_ndarrays(parameters))
        return parameters, metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        """As the wrapped strategy."""
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results: list, failures: list):
        """As the wrapped strategy."""
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters):
        """As the wrapped strategy."""
        return self.strategy.evaluate(server_round, parameters)
