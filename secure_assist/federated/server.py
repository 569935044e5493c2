"""The FedAvg server: Flower's FedAvg, its central-DP wrapper or its SecAgg+ workflow, recorded.

Nothing here aggregates: the averaging, clipping, noise and secure aggregation are Flower's
(`flwr.server.strategy.FedAvg`, `DifferentialPrivacyClientSideFixedClipping`,
`flwr.server.workflow.SecAggPlusWorkflow`), run by Flower's `DefaultWorkflow`. SecAgg+ only
exists as a workflow of Flower's strategy API, so every variant uses that API, one code path.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerConfig
from flwr.server.compat import LegacyContext
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp
from opacus.accountants import RDPAccountant

from protocol.files import write_atomic
from secure_assist.federated.client import LOCAL_EPOCHS_KEY, ROUND_KEY, UNIT_WEIGHT_KEY
from secure_assist.federated.recording import RecordingStrategy
from secure_assist.federated.settings import FedAvgSettings

SERVER_FILE = "server.json"  # the server's own compute seconds


def sampled_per_round(settings: FedAvgSettings, devices: int) -> int:
    """Devices Flower's FedAvg samples each round (`fraction_train` of them, at least one)."""
    return max(1, int(devices * settings.fraction_train))


def strategy(settings: FedAvgSettings, initial: list[np.ndarray], devices: int, updates_dir: Path,
             max_weight: float) -> Strategy:
    """The server's strategy for the variant, wrapped so that what it receives is recorded (and an update
    declaring a weight beyond `max_weight` is refused)."""
    sampled = sampled_per_round(settings, devices)

    def fit_config(server_round: int) -> dict:
        return {ROUND_KEY: server_round, LOCAL_EPOCHS_KEY: settings.local_epochs,
                UNIT_WEIGHT_KEY: settings.variant == "dp"}

    inner: Strategy = FedAvg(fraction_fit=settings.fraction_train, fraction_evaluate=0.0, min_fit_clients=sampled,
                             min_evaluate_clients=0, min_available_clients=devices, on_fit_config_fn=fit_config,
                             initial_parameters=ndarrays_to_parameters(initial), accept_failures=False)
    if settings.variant == "dp":
        inner = DifferentialPrivacyClientSideFixedClipping(inner, settings.noise_multiplier, settings.clipping_norm,
                                                           sampled)
    return RecordingStrategy(inner, updates_dir, secure_aggregation=settings.variant == "secagg", max_weight=max_weight)


def run_rounds(grid: Grid, context: Context, settings: FedAvgSettings, initial: list[np.ndarray], devices: int,
               updates_dir: Path, max_weight: float) -> None:
    """The server's whole run: `settings.rounds` rounds over `devices` devices through Flower's
    `DefaultWorkflow` (SecAgg+'s workflow for its fit stage under `secagg`); `max_weight`: the
    largest weight a device may declare (SecAgg+ scales updates by weight / max_weight)."""
    # The server's own work: this thread's CPU time (waiting for the devices is not work).
    start = time.thread_time()
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=settings.rounds),
                           strategy=strategy(settings, initial, devices, updates_dir, max_weight))
    fit_workflow = None
    if settings.variant == "secagg":
        fit_workflow = SecAggPlusWorkflow(num_shares=min(settings.secagg_shares, devices),
                                          reconstruction_threshold=min(settings.secagg_threshold, devices),
                                          max_weight=max_weight, clipping_range=settings.secagg_clipping_range)
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
    write_atomic(Path(updates_dir) / SERVER_FILE, json.dumps({"server_seconds": time.thread_time() - start}).encode())


def server_app(settings: FedAvgSettings, initial: list[np.ndarray], devices: int, updates_dir: Path,
               max_weight: float) -> ServerApp:
    """The simulation's ServerApp (`run_rounds` with these arguments)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_rounds(grid, context, settings, initial, devices, updates_dir, max_weight)

    return app


def dp_accounting(settings: FedAvgSettings, devices: int) -> dict[str, float] | None:
    """User-level (ε, δ) of the released global models after `rounds` rounds (Opacus' RDP
    accountant: a subsampled Gaussian mechanism per round, with the sampling rate of the
    devices); None for a variant without DP."""
    if settings.variant != "dp":
        return None
    rate = sampled_per_round(settings, devices) / devices
    accountant = RDPAccountant()
    accountant.history = [(settings.noise_multiplier, rate, settings.rounds)]
    epsilon = accountant.get_epsilon(settings.delta)
    return {"epsilon": float(epsilon) if math.isfinite(epsilon) else math.inf, "delta": settings.delta,
            "noise_multiplier": settings.noise_multiplier, "clipping_norm": settings.clipping_norm,
            "sample_rate": rate, "rounds": settings.rounds, "accountant": "opacus RDP", "unit": "device"}
