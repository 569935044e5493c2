"""The FedAvg server's recorder: a strategy wrapper that writes its view (`protocol.server.federated_view`).

`RecordingStrategy` wraps the strategy the server runs (Flower's FedAvg, or its DP wrapper
around it) and writes what reaches `aggregate_fit`: every device's trained tensors, or under
SecAgg+, where Flower's workflow hands the strategy only the unmasked sum, that aggregate alone;
and the global model each round produced, which every device downloads anyway. An update
whose tensors are not the global model's (names, shapes, finite values), or whose declared weight
(its sample count, which FedAvg weighs it by) is beyond the largest a device may hold, is a failed
device: it is neither stored nor averaged, and the strategy (which accepts no failures) skips the round.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flwr.common import FitRes, Parameters, Scalar, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from protocol.files import private_dir
from protocol.server.federated_view import (
    AGGREGATE_FILE, GLOBAL_FILE, NODE_PREFIX, WEIGHTS_KEY, round_dir, save_tensors,
)


class RecordingStrategy(Strategy):
    """Delegates to `strategy` and records what the server receives and publishes."""

    def __init__(self, strategy: Strategy, updates_dir: Path, secure_aggregation: bool, max_weight: float) -> None:
        super().__init__()
        self.strategy = strategy
        self.updates_dir = private_dir(Path(updates_dir))
        self.secure_aggregation = secure_aggregation
        # Without it one device could claim any sample count and outweigh every other in the average. Under
        # SecAgg+ the workflow scales each weight by it before masking, and the strategy sees only the sum.
        self.max_weight = max_weight
        self.shapes: list[tuple[int, ...]] | None = None  # the global model's, fixed by round 0

    def __repr__(self) -> str:
        return f"RecordingStrategy({self.strategy!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The wrapped strategy's initial model, recorded as round 0."""
        parameters = self.strategy.initialize_parameters(client_manager)
        if parameters is not None:
            arrays = parameters_to_ndarrays(parameters)
            self.shapes = [a.shape for a in arrays]
            save_tensors(round_dir(self.updates_dir, 0) / GLOBAL_FILE, arrays)
        return parameters

    def fits(self, result: FitRes) -> bool:
        """Whether an update has the global model's shapes and finite float values, and (without SecAgg+) a
        weight in (0, max_weight]."""
        if not self.secure_aggregation and not 0 < result.num_examples <= self.max_weight:
            return False
        arrays = parameters_to_ndarrays(result.parameters)
        return (self.shapes is not None and [a.shape for a in arrays] == self.shapes
                and all(np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() for a in arrays))

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        """As the wrapped strategy."""
        return self.strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Record the round's updates (or their sum), aggregate, record the new global model."""
        failures = failures + [res for _, res in results if not self.fits(res)]
        results = [(proxy, res) for proxy, res in results if self.fits(res)]
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
