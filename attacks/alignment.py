"""Attacks on the device's secret rotation of the pivot states (`activation_rotation`).

The server knows the mechanism (a Haar-random orthogonal R_i per layer) but not R. What a
rotation keeps is what these attacks use:

- `rotation_invariant_matching` (reconstruction): per-layer norms, then inner products with
  confidently matched anchors, against the candidate pool run through the public backbone;
- alignment attacks (kind ALIGNMENT) return an estimate R̂, which the audit scores against
  the device's R and then uses to realign the view for every attack that reads states in the
  backbone's coordinates (public head, probes, inversion, candidate matching, φ as a model):
  - `distribution_alignment`: unsupervised, public unlabeled text only: eigen-alignment
    (mean and high-variance directions as anchors) refined by Wasserstein-Procrustes;
  - `known_pairs_k{1,8,64}`: orthogonal Procrustes on k uploads whose text the server knows
    (it made the device process them); exact on their span, so k ≥ d pairs give R;
  - `matching_alignment`: rotation-invariant matching against the candidate pool turns a
    suspect list into pairs, then Procrustes on the confident ones.
They do not run when the server knows the device does not rotate (`PublicKnowledge.mechanisms`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attacks.base import ALIGNMENT, Attack, AttackResult, PublicKnowledge, sized_variants
from attacks.rotation_math import (
    eigen_alignment, invariant_match, nearest_states, procrustes, wasserstein_procrustes,
)
from attacks.reconstruction import CandidateMatching, candidate_pool
from attacks.view_data import PivotData, layer_directions, pivot_data
from protocol.model.input_maps import unrotate
from protocol.model.names import ROTATION_MECHANISM
from protocol.server.transcript import PIVOT_ACTIVATIONS, ServerView


class RotationInvariantMatching(CandidateMatching):
    """Candidate matching by what a per-layer rotation keeps: norms, then within-layer Gram
    structure against anchors (works on plain and rotated views alike)."""

    NAME = "rotation_invariant_matching"
    DESCRIPTION = "nearest candidate text by per-layer norms and inner products with matched anchors"
    PUBLIC_COORDINATES = False

    def match(self, states: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return invariant_match(states, candidates).index


class RotationAlignment(Attack):
    """Base of the alignment attacks: an estimate R̂ (L, d, d) of the device's rotations."""

    KIND = ALIGNMENT
    NEEDS = frozenset({PIVOT_ACTIVATIONS})

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        if public.mechanisms is not None and ROTATION_MECHANISM not in public.mechanisms:
            raise self.lacks(f"a device that rotates its states (mechanism {ROTATION_MECHANISM})")
        data = pivot_data(view, self)
        rotation, details = self.estimate(data, public)
        return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=data.sample_ids,
                            rotation=rotation.astype(np.float32), details=details)

    def estimate(self, data: PivotData, public: PublicKnowledge) -> tuple[np.ndarray, dict[str, Any]]:
        """(R̂, details) from the received states and public knowledge (subclasses)."""
        raise NotImplementedError


class DistributionAlignment(RotationAlignment):
    """Unpaired: each layer's received states aligned to public-text states of the same layer."""

    NAME = "distribution_alignment"
    DESCRIPTION = "R̂ from public unlabeled text: eigen-alignment then Wasserstein-Procrustes, per layer"
    # Public states and received states compared per layer (a subsample keeps the assignment cheap).
    SAMPLE = 600
    ITERATIONS = 8

    def estimate(self, data: PivotData, public: PublicKnowledge) -> tuple[np.ndarray, dict[str, Any]]:
        corpus = list(public.unlabeled_texts)
        if len(corpus) < 50:
            raise self.lacks(f"public unlabeled text (>= 50 texts, got {len(corpus)})")
        reference = public.public_features(self.NAME, corpus, data.layers).activations
        rotations = []
        for layer in range(len(data.layers)):
            start = eigen_alignment(data.activations[:, layer], reference[:, layer])
            rotations.append(wasserstein_procrustes(data.activations[:, layer], reference[:, layer], start,
                                                    self.ITERATIONS, self.SAMPLE, public.seed))
        return np.stack(rotations), {"public_texts": len(corpus), "assignment_sample": self.SAMPLE}


class KnownPairs(RotationAlignment):
    """Orthogonal Procrustes on K (public-backbone state, received state) pairs per layer."""

    K = 0

    def estimate(self, data: PivotData, public: PublicKnowledge) -> tuple[np.ndarray, dict[str, Any]]:
        position = {sample_id: row for row, sample_id in enumerate(data.sample_ids)}
        known = [(position[sid], text) for sid, text in public.known_samples if sid in position]
        if len(known) < self.K:
            raise self.lacks(f"{self.K} uploads of known text (got {len(known)})")
        rows = np.array([row for row, _ in known[:self.K]])
        # The public backbone on every known text (one cached pass whatever k), of which k are used.
        plain = public.public_features(self.NAME, [text for _, text in known], data.layers).activations[:self.K]
        rotation = np.stack([procrustes(plain[:, layer], data.activations[rows, layer])
                             for layer in range(len(data.layers))])
        return rotation, {"known_pairs": self.K}


# One registered attack per number of known texts.
KNOWN_PAIRS = sized_variants(KnownPairs, "known_pairs_k{k}", (1, 8, 64),
                             "R̂ by orthogonal Procrustes on {k} uploads whose text the server knows",
                             "Known-pair alignment with k = {k} known texts.")


class MatchingAlignment(RotationAlignment):
    """Pairs from rotation-invariant matching against the candidate pool, then Procrustes on
    the most confident ones; one refinement: nearest candidate on the realigned states."""

    NAME = "matching_alignment"
    DESCRIPTION = "R̂ by Procrustes on pairs found by rotation-invariant matching against the candidate pool"
    CONFIDENT = 0.75  # share of matches (by margin) used as pairs

    def estimate(self, data: PivotData, public: PublicKnowledge) -> tuple[np.ndarray, dict[str, Any]]:
        pool, candidates = candidate_pool(self, public, data.layers)
        matching = invariant_match(data.activations, candidates)
        keep = np.argsort(-matching.margin)[:max(1, int(self.CONFIDENT * len(matching.index)))]
        rotation = self._fit(data.activations[keep], candidates[matching.index[keep]])
        # Refinement: every sample's nearest candidate in the realigned space, then Procrustes again.
        realigned = unrotate(data.activations, rotation.astype(np.float32))
        nearest = nearest_states(layer_directions(realigned), layer_directions(candidates))
        rotation = self._fit(data.activations, candidates[nearest])
        return rotation, {"pool": len(pool), "pairs": int(len(keep))}

    @staticmethod
    def _fit(received: np.ndarray, plain: np.ndarray) -> np.ndarray:
        return np.stack([procrustes(plain[:, layer], received[:, layer]) for layer in range(received.shape[1])])
