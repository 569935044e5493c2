"""Federated averaging deployed: a SuperLink, one SuperNode per device, the rounds submitted with `flwr run`.

The Flower App (`app/`, its pyproject names `serverapp` and `clientapp` below) runs the same
server (`server.run_rounds`) and device client as the simulation. A SuperNode names its
device's work directory in its node config (`device-workdir`); the run configuration carries
the FedAvg settings and the side network's shape, so that the server builds the round-0 model
itself. `submit` is what `run_fedavg(..., superlink=NAME)` calls instead of the simulation:
`flwr run` against the SuperLink connection NAME of the Flower configuration
(`$FLWR_HOME/config.toml`, with its address and `root-certificates` for TLS). README,
"Federated averaging (Flower)", has the commands, certificates included.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from protocol.errors import UserInputError
from protocol.model.side_network import SideNetworkShape
from protocol.server.federated_rounds import initial_network, shared_arrays
from protocol.server.federated_view import rounds_recorded
from protocol.server.training_settings import ServerTraining
from secure_assist.federated.client import client_app
from secure_assist.federated.server import run_rounds
from secure_assist.federated.settings import FedAvgSettings

APP_DIR = Path(__file__).parent / "app"

clientapp = client_app(None)
serverapp = ServerApp()


@serverapp.main()
def _main(grid: Grid, context: Context) -> None:
    config = context.run_config
    settings = FedAvgSettings(
        variant=str(config["variant"]), rounds=int(config["rounds"]), local_epochs=int(config["local-epochs"]),
        fraction_train=float(config["fraction-train"]), noise_multiplier=float(config["noise-multiplier"]),
        clipping_norm=float(config["clipping-norm"]), secagg_shares=int(config["secagg-shares"]),
        secagg_threshold=int(config["secagg-threshold"]), secagg_clipping_range=float(config["secagg-clipping-range"]))
    shape = SideNetworkShape(n_layers=int(config["n-layers"]), hidden_size=int(config["hidden-size"]),
                             rank=int(config["rank"]), n_classes=int(config["n-classes"]))
    training = ServerTraining(rank=shape.rank, seed=int(config["seed"]), dropout=float(config["dropout"]))
    run_rounds(grid, context, settings, shared_arrays(initial_network(shape, training)), int(config["devices"]),
               Path(str(config["updates-dir"])), float(config["max-weight"]))


def run_config(settings: FedAvgSettings, shape: SideNetworkShape, training: ServerTraining, devices: int,
               updates_dir: Path, max_weight: float) -> str:
    """The `--run-config` of one run (TOML values)."""
    values = {"variant": f'"{settings.variant}"', "rounds": settings.rounds, "local-epochs": settings.local_epochs,
              "fraction-train": float(settings.fraction_train), "noise-multiplier": float(settings.noise_multiplier),
              "clipping-norm": float(settings.clipping_norm), "secagg-shares": settings.secagg_shares,
              "secagg-threshold": settings.secagg_threshold,
              "secagg-clipping-range": float(settings.secagg_clipping_range), "devices": devices,
              "n-layers": shape.n_layers, "hidden-size": shape.hidden_size, "rank": shape.rank,
              "n-classes": shape.n_classes, "seed": training.seed, "dropout": float(training.dropout),
              "max-weight": float(max_weight), "updates-dir": f'"{Path(updates_dir).resolve()}"'}
    return " ".join(f"{key}={value}" for key, value in values.items())


def submit(settings: FedAvgSettings, shape: SideNetworkShape, training: ServerTraining, devices: int,
           updates_dir: Path, max_weight: float, superlink: str) -> float:
    """Run the rounds on the SuperLink connection `superlink` (`flwr run ... --stream`, which
    returns once the run ended); its wall seconds. The view must then hold every round."""
    command = [str(Path(sys.executable).parent / "flwr"), "run", str(APP_DIR), superlink, "--stream",
               "--run-config", run_config(settings, shape, training, devices, updates_dir, max_weight)]
    start = time.perf_counter()
    finished = subprocess.run(command, check=False)
    seconds = time.perf_counter() - start
    if finished.returncode != 0 or rounds_recorded(updates_dir) != list(range(settings.rounds + 1)):
        raise UserInputError(f"`flwr run` on SuperLink {superlink!r} did not finish {settings.rounds} rounds "
                             f"(exit code {finished.returncode}, rounds recorded: {rounds_recorded(updates_dir)})")
    return seconds
