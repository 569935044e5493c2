"""Label shares from federated-averaging updates: what a FedAvg server learns of each device's labels.

Threat: an honest-but-curious FedAvg server (`secure_assist.federated`), reading its view
(`protocol.server.federated_view`): every device's trained tensors each round, or under SecAgg+
only their weighted mean. Last-layer label attacks read the head's gradient (LLG, Wainakh et
al., PETS 2022; iLRG, Ma et al., ICLR 2023); here the head's *bias* is where a device's label mix
goes. A device standardizes its pivot states on its own data (`federated_rounds`), so the state
the head reads is centred on that data and the mean side value over it is the bias; MSE training
against Δ pulls that mean toward mean Δ = (label shares) − (mean backbone probabilities). So a
device's bias step moves with its label shares.

A device's step is E epochs of AdamW, not a gradient, so the attack calibrates the step on
shadow devices, as shadow-model property inference does (Ganju et al., CCS 2018): each round it
runs the same local round (`local_round`, the protocol's public code and settings) from the same
global model on shadow devices drawn from public labeled examples with known label shares
(Dirichlet draws, the devices' declared size), fits a linear map from bias step to label shares
(least squares), and applies it to each device's step; the estimates are averaged over rounds.
Under SecAgg+ the one step is the aggregate's: the map gives the pool's shares, the same for
every device. It is not in `attacks.registry`: registered attacks read one device's per-sample
view (`ServerView`) and answer per sample, this one reads a FedAvg view and answers per device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.base import PublicKnowledge
from protocol.device.forward_device import prediction_difference
from protocol.model.side_network import SideNetworkShape
from protocol.server.federated_rounds import SHARED_NAMES, local_network, local_round, shared_arrays
from protocol.server.federated_view import aggregate, declared_weights, global_model, node_updates, rounds_recorded
from protocol.server.training_settings import ServerTraining

NAME = "fedavg_label_shares"
SHADOWS = 24  # shadow devices per round (the default)
BIAS = SHARED_NAMES.index("head.bias")
POOL = -1  # the key of the pool's estimate (secure aggregation: the only one)


def bias_step(tensors: list[np.ndarray], start: list[np.ndarray]) -> np.ndarray:
    """How far a round moved the head's bias (C values)."""
    return np.asarray(tensors[BIAS], dtype=np.float64) - np.asarray(start[BIAS], dtype=np.float64)


class ShadowCalibration:
    """Public labeled forward outputs, and the linear map from bias step to label shares fitted on
    shadow devices trained from a given global model."""

    def __init__(self, public: PublicKnowledge, layers: tuple[int, ...], training: ServerTraining,
                 local_epochs: int, seed: int = 0, shadows: int = SHADOWS) -> None:
        if not public.labeled:
            raise ValueError(f"attack {NAME!r} needs public labeled examples")
        features = public.public_features(NAME, [e.text for e in public.labeled], layers)
        self.labels = np.array([e.label for e in public.labeled])
        self.activations = features.activations.astype(np.float32)
        self.delta = prediction_difference(torch.from_numpy(features.label_logits),
                                           torch.from_numpy(self.labels)).numpy()
        self.n_classes = self.delta.shape[1]
        self.by_class = [np.flatnonzero(self.labels == c) for c in range(self.n_classes)]
        if any(len(rows) == 0 for rows in self.by_class):
            raise ValueError(f"attack {NAME!r} needs public labeled examples of every class")
        self.training, self.local_epochs, self.shadows = training, local_epochs, shadows
        self.shape = SideNetworkShape(n_layers=self.activations.shape[1], hidden_size=self.activations.shape[2],
                                      rank=training.rank, n_classes=self.n_classes)
        self.rng = np.random.default_rng([seed, 25])

    def shadow_step(self, start: list[np.ndarray], shares: np.ndarray, size: int, server_round: int) -> np.ndarray:
        """The bias step of one shadow device of `size` public examples with label `shares`."""
        counts = self.rng.multinomial(size, shares)
        rows = np.concatenate([self.rng.choice(self.by_class[c], counts[c]) for c in range(self.n_classes)])
        network = local_network(self.shape, self.activations[rows], start, self.training.dropout)
        local_round(network, self.activations[rows], self.delta[rows], self.training, self.local_epochs, server_round)
        return bias_step(shared_arrays(network), start)

    def fit(self, start: list[np.ndarray], size: int, server_round: int) -> np.ndarray:
        """Least-squares map [step, 1] -> shares from the shadow devices ((C + 1, C) matrix)."""
        shares = self.rng.dirichlet(np.ones(self.n_classes), self.shadows)
        steps = np.stack([self.shadow_step(start, s, size, server_round) for s in shares])
        design = np.hstack([steps, np.ones((self.shadows, 1))])
        return np.linalg.lstsq(design, shares, rcond=None)[0]


def as_shares(values: np.ndarray) -> np.ndarray:
    """Estimates clipped into the simplex."""
    clipped = np.clip(values, 0.0, None)
    total = clipped.sum()
    return clipped / total if total > 0 else np.full(len(values), 1.0 / len(values))


def infer_label_shares(updates_dir: Path, public: PublicKnowledge, layers: tuple[int, ...],
                       training: ServerTraining, local_epochs: int, seed: int = 0,
                       shadows: int = SHADOWS) -> dict[int, np.ndarray]:
    """Each device's label shares, by node id, from the view (secure aggregation: {POOL: the
    pool's shares}). `layers`, `training`, `local_epochs`: the protocol's public settings."""
    calibration = ShadowCalibration(public, layers, training, local_epochs, seed, shadows)
    estimates: dict[int, list[np.ndarray]] = {}
    for server_round in [r for r in rounds_recorded(updates_dir) if r > 0]:
        start = global_model(updates_dir, server_round - 1)
        received = node_updates(updates_dir, server_round)
        summed = aggregate(updates_dir, server_round)
        if summed is not None:
            received = {POOL: summed}
        weights = declared_weights(updates_dir, server_round)
        # Under DP the declared weights are all 1: shadows then take the public set's size.
        size = int(np.median(list(weights.values()))) if weights else len(calibration.labels)
        size = size if size > 1 else len(calibration.labels)
        mapping = calibration.fit(start, size, server_round)
        for node, tensors in received.items():
            estimates.setdefault(node, []).append(np.append(bias_step(tensors, start), 1.0) @ mapping)
    return {node: as_shares(np.mean(values, axis=0)) for node, values in estimates.items()}


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance of two distributions."""
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def fedavg_update_leak(updates_dir: Path, truths: dict[int, np.ndarray], public: PublicKnowledge,
                       layers: tuple[int, ...], training: ServerTraining, local_epochs: int,
                       seed: int = 0, shadows: int = SHADOWS) -> dict[str, Any]:
    """Score the attack: `truths` are each device's label counts by node id (the auditor's, never the
    attack's). Error = mean total variation between estimated and true label shares over devices,
    against the prior-only guess (every device holds the pool's shares, the best guess without
    the updates)."""
    estimates = infer_label_shares(updates_dir, public, layers, training, local_epochs, seed, shadows)
    counts = {node: np.asarray(c, dtype=np.float64) for node, c in truths.items()}
    pool = as_shares(np.sum(list(counts.values()), axis=0))
    per_device = {}
    for node, c in counts.items():
        estimate = estimates.get(node, estimates.get(POOL))
        per_device[node] = {"true": (c / c.sum()).tolist(), "estimate": estimate.tolist(),
                            "tv": total_variation(estimate, c / c.sum()), "prior_tv": total_variation(pool, c / c.sum())}
    return {"attack": NAME, "view": "aggregate only" if POOL in estimates else "each device's update",
            "rounds": len(rounds_recorded(updates_dir)) - 1, "devices": len(counts),
            "mean_tv": float(np.mean([d["tv"] for d in per_device.values()])),
            "prior_mean_tv": float(np.mean([d["prior_tv"] for d in per_device.values()])),
            "per_device": per_device}
