"""The Flower client of a device: local epochs of the side trainer on its own forward outputs.

Each round it starts from the global shared tensors, trains E epochs with the project's
`SideTrainer` (the side network, AdamW and MSE loss of `device_local` and PAE; a fresh
optimizer each round and a constant rate, as FedAvg's local steps are), and returns the
tensors with its weight in the average. It sends no metrics: the update is all it discloses.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.client import NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.serde import recorddict_to_proto

from protocol.server.trainer import SideTrainer
from secure_assist.federated import device_side
from secure_assist.federated.settings import FedAvgSettings
from secure_assist.federated.shared_weights import local_network, shared_arrays

# Keys of the round's configuration that the server sends with the global tensors.
ROUND_KEY, LOCAL_EPOCHS_KEY, UNIT_WEIGHT_KEY = "round", "local-epochs", "unit-weight"
# Where a deployed SuperNode finds its device (`flower-supernode --node-config 'device-workdir="..."'`).
WORKDIR_KEY = "device-workdir"


class LocalSideClient(NumPyClient):
    """One device's FedAvg client; its data never leaves `workdir`."""

    def __init__(self, workdir: Path, node_id: int) -> None:
        self.workdir = Path(workdir)
        self.node_id = node_id

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """E local epochs from the global tensors: (trained tensors, weight, no metrics)."""
        start = time.perf_counter()
        server_round = int(config[ROUND_KEY])
        training = device_side.load_training(self.workdir)
        activations, delta = device_side.features(self.workdir)
        shape = device_side.shape_of(activations, delta, training)
        network = local_network(shape, activations, parameters, training.dropout)
        # The round in the seed: each round shuffles differently, and a rerun identically.
        trainer = SideTrainer(replace(training, cosine_decay=False, seed=training.seed * 100_003 + server_round))
        trainer.start(network, ())
        inputs, targets = torch.from_numpy(activations), torch.from_numpy(delta)
        samples, loss = trainer.train_epochs(int(config[LOCAL_EPOCHS_KEY]), lambda: (inputs, targets, None))
        device_side.append(self.workdir, device_side.ROUNDS_FILE, {
            "round": server_round, "node_id": self.node_id, "samples": samples, "loss": loss,
            "train_seconds": time.perf_counter() - start})
        # Equal weights under DP: the accounting's sensitivity is clipping_norm / m only then.
        weight = 1 if config.get(UNIT_WEIGHT_KEY) else samples
        return shared_arrays(network), weight, {}


def payload_bytes(message: Message) -> int:
    """Serialized size of a message's records (Flower's protobuf form)."""
    return recorddict_to_proto(message.content).ByteSize() if message.has_content() else 0


def traffic_mod(workdir_of: Callable[[Context], Path]) -> Callable:
    """A Flower mod that logs, on the device, the bytes of each message it receives and answers."""

    def mod(message: Message, context: Context, call_next: Callable) -> Message:
        reply = call_next(message, context)
        device_side.append(workdir_of(context), device_side.TRAFFIC_FILE, {
            "type": message.metadata.message_type, "down": payload_bytes(message), "up": payload_bytes(reply)})
        return reply

    return mod


def client_app(variant: str, workdirs: Sequence[str] | None = None) -> ClientApp:
    """The devices' ClientApp. `workdirs`: device i of a simulation is partition i; None (a
    deployment): each SuperNode names its device's work directory in its node config."""

    def workdir_of(context: Context) -> Path:
        if workdirs is None:
            return Path(str(context.node_config[WORKDIR_KEY]))
        return Path(workdirs[int(context.node_config["partition-id"])])

    def client_fn(context: Context):
        torch.set_num_threads(1)  # one simulated device per core (FedAvgSettings.cpus_per_client)
        return LocalSideClient(workdir_of(context), int(context.node_id)).to_client()

    variant_mods = {"plain": [], "dp": [fixedclipping_mod], "secagg": [secaggplus_mod]}[variant]
    return ClientApp(client_fn=client_fn, mods=[traffic_mod(workdir_of), *variant_mods])
