"""Federated averaging of device-local side networks with Flower, in simulation.

Every device first runs the start of its `device_local` run (`start_run`: its data share,
hold-out split and forward passes, through the shared forward cache when `reuse_forwards`
is set); its forward outputs stay in its own work directory. Flower's simulation engine (Ray
backend) then runs `rounds` rounds: each sampled device trains E local epochs from the global
model (`client.py`) and Flower's FedAvg, its DP wrapper or SecAgg+ aggregates (`server.py`).
Finally every device deploys the last global model behind its own safeguard (`deploy`), so its
summary is a normal run summary. The server's view is the updates directory (`server_view.py`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from protocol.errors import UserInputError
from protocol.modes.base import TrainOutcome
from secure_assist.config import FinetuneConfig
from secure_assist.federated import device_side
from secure_assist.federated.client import client_app
from secure_assist.federated.server import SERVER_FILE, dp_accounting, server_app
from secure_assist.federated.server_view import GLOBAL_FILE, load_tensors, round_dir, rounds_recorded
from secure_assist.federated.settings import FedAvgSettings
from secure_assist.federated.shared_weights import initial_network, local_network, shared_arrays
from secure_assist.training.run import StartedRun, deploy, start_run
from secure_assist.training.summary import RunSummary
from secure_assist.training.workdir import prepare_workdir

MODE_NAME = "fedavg"  # the summaries' mode: device_local's start, Flower's rounds


@dataclass
class FedAvgOutcome:
    """The devices' summaries (configs order), what the server saw, and the run's figures."""

    summaries: list[RunSummary]
    updates_dir: Path  # each device's update per round (plain, dp), or only the aggregates (secagg)
    accounting: dict[str, Any] | None  # the DP variant's (ε, δ) and its parameters
    server_seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def check_devices(configs: list[FinetuneConfig]) -> None:
    """One config per device of one partition, without upload mechanisms (FedAvg's DP is its own)."""
    if not configs:
        raise UserInputError("federated averaging needs at least one device config")
    first = configs[0]
    indices = sorted(c.device_index for c in configs)
    if indices != list(range(first.devices)):
        raise UserInputError(f"federated averaging needs one config per device 0..{first.devices - 1}, "
                             f"got device indices {indices}")
    for config in configs:
        if (config.seed, config.model, config.partition, config.task) != (first.seed, first.model, first.partition,
                                                                           first.task):
            raise UserInputError("every device of a federated run shares its seed, model, partition and task")
        if set(config.mechanism) - {"none"}:
            raise UserInputError(f"federated averaging trains on the device: upload mechanisms "
                                 f"{list(config.mechanism)} do not apply (use the FedAvg variant dp)")
    if len({str(Path(c.workdir).resolve()) for c in configs}) != len(configs):
        raise UserInputError("every device of a federated run needs its own workdir")


def start_devices(configs: list[FinetuneConfig], progress: bool, overwrite: bool) -> list[StartedRun]:
    """Each device's `device_local` start: its forward outputs, kept in its work directory.
    The devices of this process share one frozen backbone (they load the same read-only weights)."""
    runs: list[StartedRun] = []
    for config in tqdm(configs, desc="FedAvg devices: forward passes", disable=not progress):
        run = start_run(replace(config, mode="device_local"), progress=False, overwrite=overwrite)
        run.close()
        if runs and run.device.backbone.name == runs[0].device.backbone.name:
            run.device.backbone = runs[0].device.backbone
        device_side.save_training(run.workdir, config.server_training())
        runs.append(run)
    return runs


def run_simulation(settings: FedAvgSettings, runs: list[StartedRun], updates_dir: Path) -> float:
    """Flower's simulation of the rounds (Ray backend); its wall seconds."""
    from flwr.simulation import run_simulation as flower_simulation  # Ray: imported when a simulation runs

    activations, delta = device_side.features(runs[0].workdir)
    training = runs[0].config.server_training()
    initial = shared_arrays(initial_network(device_side.shape_of(activations, delta, training), training))
    max_weight = float(max(len(run.upload_set) for run in runs))
    start = time.perf_counter()
    flower_simulation(server_app=server_app(settings, initial, len(runs), updates_dir, max_weight),
                      client_app=client_app(settings.variant, [str(run.workdir) for run in runs]),
                      num_supernodes=len(runs),
                      backend_config={"client_resources": {"num_cpus": settings.cpus_per_client, "num_gpus": 0.0},
                                      "init_args": {"logging_level": "ERROR", "log_to_driver": False}})
    seconds = time.perf_counter() - start
    if rounds_recorded(updates_dir) != list(range(settings.rounds + 1)):
        raise RuntimeError(f"the FedAvg simulation did not finish its {settings.rounds} rounds "
                           f"(rounds recorded: {rounds_recorded(updates_dir)}); see Flower's log above")
    return seconds


def deploy_device(run: StartedRun, settings: FedAvgSettings, final: list) -> RunSummary:
    """The device deploys the final global model (its own standardization) behind its safeguard."""
    rounds = device_side.read_log(run.workdir, device_side.ROUNDS_FILE)
    traffic = device_side.read_log(run.workdir, device_side.TRAFFIC_FILE)
    training = run.config.server_training()
    activations, delta = device_side.features(run.workdir)
    side = local_network(device_side.shape_of(activations, delta, training), activations, final, training.dropout)
    train_seconds = sum(r["train_seconds"] for r in rounds)
    # device_local's path counts its "server" time as device training time: here, the local rounds.
    run.server_seconds = train_seconds
    outcome = TrainOutcome(side=side, epochs_done=len(rounds) * settings.local_epochs, cache_samples=len(delta),
                           final_train_loss=rounds[-1]["loss"] if rounds else None)
    summary = deploy(run, outcome)
    bytes_up, bytes_down = sum(t["up"] for t in traffic), sum(t["down"] for t in traffic)
    details = {"fedavg_variant": settings.variant, "fedavg_rounds_trained": len(rounds),
               "fedavg_train_seconds_per_round": train_seconds / max(1, len(rounds)),
               "fedavg_bytes_up_per_round": bytes_up / settings.rounds,
               "fedavg_bytes_down_per_round": bytes_down / settings.rounds,
               "fedavg_node_id": rounds[0]["node_id"] if rounds else None}
    return replace(summary, mode=MODE_NAME, bytes_up=bytes_up, bytes_down=bytes_down,
                   details={**summary.details, **details})


def run_fedavg(configs: list[FinetuneConfig], settings: FedAvgSettings = FedAvgSettings(), progress: bool = True,
               updates_dir: Path | str | None = None, overwrite: bool = False) -> FedAvgOutcome:
    """FedAvg of the devices `configs` (one per device index, each with its own workdir) under
    `settings`; `updates_dir` (default: `fedavg_server` beside the first device's workdir) is
    the server's view. Each device's summary is a normal run summary of its deployed model."""
    check_devices(configs)
    configs = sorted(configs, key=lambda c: c.device_index)
    updates_dir = Path(updates_dir) if updates_dir is not None else Path(configs[0].workdir).parent / "fedavg_server"
    prepare_workdir(updates_dir, overwrite)
    start = time.perf_counter()
    runs = start_devices(configs, progress, overwrite)
    simulation_seconds = run_simulation(settings, runs, updates_dir)
    final, _ = load_tensors(round_dir(updates_dir, settings.rounds) / GLOBAL_FILE)
    summaries = [deploy_device(run, settings, final)
                 for run in tqdm(runs, desc="FedAvg devices: deploy", disable=not progress)]
    server_seconds = json.loads((updates_dir / SERVER_FILE).read_text())["server_seconds"]
    return FedAvgOutcome(summaries=summaries, updates_dir=updates_dir,
                         accounting=dp_accounting(settings, len(configs)), server_seconds=server_seconds,
                         details={"variant": settings.variant, "rounds": settings.rounds,
                                  "local_epochs": settings.local_epochs, "devices": len(configs),
                                  "simulation_seconds": simulation_seconds,
                                  "wall_seconds": time.perf_counter() - start})
