"""Federated averaging of device-local side networks with Flower, in simulation.

Every device first runs the start of its `device_local` run (`start_run`: its data share,
hold-out split and forward passes, through the shared forward cache when `reuse_forwards`
is set); its forward outputs stay in its own work directory. Flower's simulation engine (Ray
backend) then runs `rounds` rounds: each sampled device trains E local epochs from the global
model (`client.py`) and Flower's FedAvg, its DP wrapper or SecAgg+ aggregates (`server.py`).
Finally every device deploys the last global model behind its own safeguard (`deploy`), so its
summary is a normal run summary. The server's view is the updates directory (`protocol.server.federated_view`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from protocol.errors import UserInputError
from protocol.model.side_network import SideNetworkShape
from protocol.modes.base import TrainOutcome
from protocol.server.federated_rounds import initial_network, local_network, shared_arrays
from protocol.server.federated_view import global_model
from secure_assist.audit.auditor import load_ground_truth
from secure_assist.config import FinetuneConfig
from secure_assist.federated import device_side
from secure_assist.federated.server import SERVER_FILE, dp_accounting
from secure_assist.federated.simulation import simulate
from secure_assist.federated.settings import FedAvgSettings
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

    def label_counts(self, n_classes: int) -> dict[int, np.ndarray]:
        """Each device's label counts over its training share, by its node id in the view: the
        auditor's truth (read from the devices' ground truth, never the server's)."""
        counts = {}
        for summary in self.summaries:
            labels = [t.label for t in load_ground_truth(Path(summary.config["workdir"])).values()]
            counts[int(summary.details["fedavg_node_id"])] = np.bincount(labels, minlength=n_classes)
        return counts


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


def network_shape(run: StartedRun) -> SideNetworkShape:
    """The side network the devices' forward outputs train."""
    activations, delta = device_side.features(run.workdir)
    return device_side.shape_of(activations, delta, run.config.server_training())


def federate(settings: FedAvgSettings, runs: list[StartedRun], updates_dir: Path, superlink: str | None) -> float:
    """The rounds, in Flower's simulation engine or (`superlink`) on a deployed SuperLink; wall seconds."""
    shape, training = network_shape(runs[0]), runs[0].config.server_training()
    max_weight = float(max(len(run.upload_set) for run in runs))
    if superlink is not None:
        from secure_assist.federated.deployment import submit

        return submit(settings, shape, training, len(runs), updates_dir, max_weight, superlink)
    initial = shared_arrays(initial_network(shape, training))
    return simulate(settings, initial, [str(run.workdir) for run in runs], updates_dir, max_weight)


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
               updates_dir: Path | str | None = None, overwrite: bool = False,
               superlink: str | None = None) -> FedAvgOutcome:
    """FedAvg of the devices `configs` (one per device index, each with its own workdir) under
    `settings`; `updates_dir` (default: `fedavg_server` beside the first device's workdir) is
    the server's view. Each device's summary is a normal run summary of its deployed model.
    `superlink`: a SuperLink connection of the Flower configuration whose SuperNodes serve these
    devices' workdirs (`deployment`); None: Flower's simulation engine on this machine."""
    check_devices(configs)
    configs = sorted(configs, key=lambda c: c.device_index)
    updates_dir = Path(updates_dir) if updates_dir is not None else Path(configs[0].workdir).parent / "fedavg_server"
    prepare_workdir(updates_dir, overwrite)
    start = time.perf_counter()
    runs = start_devices(configs, progress, overwrite)
    simulation_seconds = federate(settings, runs, updates_dir, superlink)
    final = global_model(updates_dir, settings.rounds)
    summaries = [deploy_device(run, settings, final)
                 for run in tqdm(runs, desc="FedAvg devices: deploy", disable=not progress)]
    server_seconds = json.loads((updates_dir / SERVER_FILE).read_text())["server_seconds"]
    return FedAvgOutcome(summaries=summaries, updates_dir=updates_dir,
                         accounting=dp_accounting(settings, len(configs)), server_seconds=server_seconds,
                         details={"variant": settings.variant, "rounds": settings.rounds,
                                  "local_epochs": settings.local_epochs, "devices": len(configs),
                                  "simulation_seconds": simulation_seconds, "engine": "simulation" if superlink is None else "deployment",
                                  "wall_seconds": time.perf_counter() - start})
