"""Flower's simulation engine (Ray backend), run in a child process of its own.

Flower's Ray backend starts Ray unless the process is connected already, always shuts Ray down
when the simulation ends, and rewrites the process's PYTHONPATH. A caller that uses Ray itself
(`--executor ray` of sweeps and audits) would lose its connection, so the simulation runs in a
spawned child that owns its Ray instance; the server's view it writes is the result.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np

from protocol.server.federated_view import rounds_recorded
from secure_assist.federated.settings import FedAvgSettings


def _simulate(settings: FedAvgSettings, initial: list[np.ndarray], workdirs: list[str], updates_dir: Path,
              max_weight: float) -> None:
    """The child: Flower's `run_simulation` of the server and the devices' clients."""
    from flwr.simulation import run_simulation

    from secure_assist.federated.client import client_app
    from secure_assist.federated.server import server_app

    run_simulation(server_app=server_app(settings, initial, len(workdirs), updates_dir, max_weight),
                   client_app=client_app(settings.variant, workdirs), num_supernodes=len(workdirs),
                   backend_config={"client_resources": {"num_cpus": settings.cpus_per_client, "num_gpus": 0.0},
                                   "init_args": {"logging_level": "ERROR", "log_to_driver": False}})


def simulate(settings: FedAvgSettings, initial: list[np.ndarray], workdirs: list[str], updates_dir: Path,
             max_weight: float) -> float:
    """Run the rounds over the devices of `workdirs` (device i is SuperNode partition i) in a
    child process; its wall seconds. The view in `updates_dir` must hold every round after it."""
    child = multiprocessing.get_context("spawn").Process(
        target=_simulate, args=(settings, initial, workdirs, updates_dir, max_weight), name="fedavg-simulation")
    start = time.perf_counter()
    child.start()
    try:
        child.join()
    finally:
        if child.is_alive():  # interrupted: do not leave the simulation running
            child.terminate()
            child.join()
    seconds = time.perf_counter() - start
    if child.exitcode != 0 or rounds_recorded(updates_dir) != list(range(settings.rounds + 1)):
        raise RuntimeError(f"the FedAvg simulation did not finish its {settings.rounds} rounds (exit code "
                           f"{child.exitcode}, rounds recorded: {rounds_recorded(updates_dir)}); see Flower's log above")
    return seconds
