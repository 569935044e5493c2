"""Which side-network tensors FedAvg averages, and moving them in and out of a network.

Every trained parameter (gates, adapters, head) is shared. The input standardization is not:
each device fits it on its own pivot states, as FedBN keeps normalization statistics local
(Li et al., ICLR 2021). A shared one would need a round that reveals each device's feature
means, and averaging it with the weights would put offsets of the activations' scale (tens)
into the updates that DP clips and SecAgg+ quantizes.
"""

from __future__ import annotations

import numpy as np
import torch

from protocol.model.side_network import AdditiveSideNetwork, SideNetworkShape
from protocol.server.trainer import SideTrainer
from protocol.server.training_settings import ServerTraining

SHARED_NAMES = ("gate_logits", "down", "up", "head.weight", "head.bias")


def shared_arrays(network: AdditiveSideNetwork) -> list[np.ndarray]:
    """The averaged tensors, in `SHARED_NAMES` order, as float32 arrays."""
    state = network.state_dict()
    return [state[name].detach().cpu().float().numpy().copy() for name in SHARED_NAMES]


@torch.no_grad()
def load_shared(network: AdditiveSideNetwork, arrays: list[np.ndarray]) -> None:
    """Set the averaged tensors of `network` (its standardization stays as it is)."""
    state = network.state_dict()
    if len(arrays) != len(SHARED_NAMES):
        raise ValueError(f"expected {len(SHARED_NAMES)} shared tensors, got {len(arrays)}")
    for name, array in zip(SHARED_NAMES, arrays):
        if tuple(array.shape) != tuple(state[name].shape):
            raise ValueError(f"shared tensor {name} has shape {array.shape}, expected {tuple(state[name].shape)}")
        state[name].copy_(torch.from_numpy(np.asarray(array, dtype=np.float32)))


def initial_network(shape: SideNetworkShape, training: ServerTraining) -> AdditiveSideNetwork:
    """The global model of round 0: the side network as the side trainer initialises it."""
    return AdditiveSideNetwork(shape, training.dropout, generator=SideTrainer(training).init_generator())


def local_network(shape: SideNetworkShape, activations: np.ndarray, arrays: list[np.ndarray],
                  dropout: float = 0.0) -> AdditiveSideNetwork:
    """A device's copy of the global model: its own standardization, the shared tensors."""
    # Its own generator: the initial draw is overwritten, and must not move torch's global one.
    network = AdditiveSideNetwork(shape, dropout, generator=torch.Generator())
    network.fit_input_scaling(torch.from_numpy(activations.astype(np.float32)))
    load_shared(network, arrays)
    return network
