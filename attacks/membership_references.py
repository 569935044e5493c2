"""The membership attacker's reference models: side networks it trains itself, with the
project's own side trainer and the target's recipe, on its public rows and the candidates.

A membership attacker (LiRA, RMIA) calibrates the target's confidence on each candidate
against models trained like the target with and without that candidate. Side networks train
in seconds on cached backbone features, so the attacker computes the public backbone's pivot
states of every row once and trains every reference from them. Reference r trains on a
random subset of the candidates (each candidate is "in" for some references and "out" for
the others; `included`) filled up to the target's training size with public rows, exactly as
PAE's server trains: input standardization from the first upload, one step per upload of the
device's batch size (epoch 1), then cached epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from protocol.model.side_network import AdditiveSideNetwork, SideNetworkShape
from protocol.server.trainer import SideTrainer
from protocol.server.training_settings import ServerTraining


@dataclass(frozen=True)
class LabeledFeatures:
    """Backbone outputs of labeled rows: what a side network trains on and is scored with."""

    activations: np.ndarray  # (n, L, d) pivot states of the uploaded layers
    label_logits: np.ndarray  # (n, C) backbone logits of the label words
    labels: np.ndarray  # (n,) class indices

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> "LabeledFeatures":
        """The rows `rows`, in that order."""
        return LabeledFeatures(self.activations[rows], self.label_logits[rows], self.labels[rows])

    @staticmethod
    def concatenate(parts: list["LabeledFeatures"]) -> "LabeledFeatures":
        """The rows of every part, in order."""
        return LabeledFeatures(np.concatenate([p.activations for p in parts]),
                               np.concatenate([p.label_logits for p in parts]),
                               np.concatenate([p.labels for p in parts]))

    def backbone_probabilities(self) -> torch.Tensor:
        """p_b = softmax of the label-word logits, (n, C)."""
        return torch.softmax(torch.from_numpy(np.asarray(self.label_logits, dtype=np.float32)), dim=-1)

    def deltas(self) -> torch.Tensor:
        """PAE's training targets Δ = onehot(y) - p_b, (n, C)."""
        probabilities = self.backbone_probabilities()
        onehot = torch.nn.functional.one_hot(torch.from_numpy(self.labels).long(), probabilities.shape[1]).float()
        return onehot - probabilities


@dataclass(frozen=True)
class TrainingRecipe:
    """How the target's side network was trained, which the attacker mimics (the protocol and
    its defaults are public): the server's settings, the total epochs and the upload size."""

    training: ServerTraining
    epochs: int
    upload_size: int  # rows per upload (the device's batch size): one arrival step each


def deployed_scores(side: torch.nn.Module | None, features: LabeledFeatures) -> np.ndarray:
    """What a deployed model outputs per class: p_b + g(A) (p_b alone without a side output)."""
    probabilities = features.backbone_probabilities()
    if side is None:
        return probabilities.numpy()
    side.eval()
    with torch.inference_mode():
        return (probabilities + side(torch.from_numpy(np.asarray(features.activations)))).numpy()


def train_side_network(features: LabeledFeatures, recipe: TrainingRecipe, seed: int,
                       targets: torch.Tensor | None = None) -> AdditiveSideNetwork:
    """A side network trained on `features` (in their order) as PAE's server trains one, on their Δ or on
    other `targets` of the same shape (a boosting round's Δ, refreshed at the corrected prediction)."""
    training = replace(recipe.training, seed=seed)
    trainer = SideTrainer(training)
    inputs = torch.from_numpy(np.asarray(features.activations))
    targets = features.deltas() if targets is None else targets
    shape = SideNetworkShape(n_layers=inputs.shape[1], hidden_size=inputs.shape[2], rank=training.rank,
                             n_classes=targets.shape[1])
    network = AdditiveSideNetwork(shape, training.dropout, generator=trainer.init_generator())
    network.fit_input_scaling(inputs[:recipe.upload_size].float())  # as the server does from the first upload
    trainer.start(network, tuple(range(shape.n_layers)))
    for start in range(0, len(features), recipe.upload_size):
        end = min(start + recipe.upload_size, len(features))
        trainer.train_arrival(inputs[start:end], targets[start:end], end)
    trainer.train_until(recipe.epochs, lambda: (inputs, targets, None))
    return trainer.network


@dataclass(frozen=True)
class ReferenceOutputs:
    """What the reference models output on the candidates and on the population rows."""

    candidate_scores: np.ndarray  # (R, n, C) deployed scores of reference r on candidate i
    included: np.ndarray  # (R, n) whether reference r trained on candidate i
    population_scores: np.ndarray  # (R, m, C) on the population rows (RMIA's z)

    def __len__(self) -> int:
        return len(self.included)

    def first(self, count: int) -> "ReferenceOutputs":
        """The first `count` references (how the attack strength moves with their number)."""
        return ReferenceOutputs(self.candidate_scores[:count], self.included[:count], self.population_scores[:count])


def inclusion(count: int, candidates: int, size: int, seed: int) -> np.ndarray:
    """(count, candidates) masks: reference r trains on a random min(candidates // 2, size) of them,
    so that each candidate is in about half of the references (fewer when the target's training
    set is smaller than half the candidates)."""
    rng = np.random.default_rng([seed, 7])
    take = min(candidates // 2, size)
    masks = np.zeros((count, candidates), dtype=bool)
    for row in masks:
        row[rng.choice(candidates, take, replace=False)] = True
    return masks


def train_references(candidates: LabeledFeatures, population: LabeledFeatures, recipe: TrainingRecipe,
                     count: int, size: int, seed: int = 0, progress: bool = True) -> ReferenceOutputs:
    """`count` reference side networks, each trained on `size` rows (its candidates, then
    population rows drawn at random), and their scores on every candidate and population row."""
    included = inclusion(count, len(candidates), size, seed)
    rng = np.random.default_rng([seed, 8])
    candidate_scores, population_scores = [], []
    for r in tqdm(range(count), desc="membership reference models", unit="model", disable=not progress,
                  leave=False):
        fill = rng.choice(len(population), min(len(population), size - int(included[r].sum())), replace=False)
        rows = LabeledFeatures.concatenate([candidates.subset(np.flatnonzero(included[r])), population.subset(fill)])
        # Uploads arrive in the device's order, not grouped by source.
        rows = rows.subset(rng.permutation(len(rows)))
        network = train_side_network(rows, recipe, seed=seed + 1 + r)
        candidate_scores.append(deployed_scores(network, candidates))
        population_scores.append(deployed_scores(network, population))
    return ReferenceOutputs(np.stack(candidate_scores), included, np.stack(population_scores))
