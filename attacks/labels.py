"""Label inference from a PAE-style view: Δ, the public head, clustering, φ, and probes.

Rows marked ACTIVATIONS_ONLY read nothing derived from Δ (neither Δ nor the φ trained
on it): they are the baseline no protection of Δ can remove.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from attacks.base import LABELS, Attack, AttackResult, PublicKnowledge, sized_variants
from attacks.public_model import public_backbone, softmax, zero_shot_logits
from attacks.view_data import PivotData, layer_directions, pivot_data
from protocol.wire.codec import decode
from protocol.errors import ProtocolError
from protocol.model.side_network import AdditiveSideNetwork, network_from_arrays
from protocol.server.transcript import DELTA, PIVOT_ACTIVATIONS, SIDE_NETWORK, ServerView


def _zero_shot_probs(attack: Attack, data: PivotData, public: PublicKnowledge) -> np.ndarray:
    backbone = public_backbone(public.backbone_name)
    return softmax(zero_shot_logits(backbone, public.task, data.layer(attack, backbone.n_layers)))


def _result(attack: Attack, data: PivotData, predictions: np.ndarray, scores: np.ndarray | None = None,
            **details: object) -> AttackResult:
    return AttackResult(attack=attack.NAME, kind=LABELS, sample_ids=data.sample_ids,
                        predictions=np.asarray(predictions, dtype=np.int64), details=dict(details),
                        scores=None if scores is None else np.asarray(scores, dtype=np.float64))


def _scored(attack: Attack, data: PivotData, scores: np.ndarray, **details: object) -> AttackResult:
    """Predictions as the argmax of per-class scores, the scores kept for AUC."""
    return _result(attack, data, scores.argmax(axis=1), scores, **details)


class DeltaArgmax(Attack):
    """argmax Δ: with Δ = onehot(y) - p_b the label is the only positive entry (its sign)."""

    NAME = "delta_argmax"
    NEEDS = frozenset({PIVOT_ACTIVATIONS, DELTA})
    DESCRIPTION = "argmax of the received prediction difference"

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = pivot_data(view, self, need_delta=True)
        return _scored(self, data, data.delta)


class PublicHeadCombined(Attack):
    """argmax(p_b + Δ): the public head on A_L undoes a Δ given relative to p_b."""

    NAME = "public_head"
    NEEDS = frozenset({PIVOT_ACTIVATIONS, DELTA})
    DESCRIPTION = "public final norm + LM head on the last-layer pivot state, combined with Δ"

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = pivot_data(view, self, need_delta=True)
        return _scored(self, data, _zero_shot_probs(self, data, public) + data.delta)


class PublicHeadZeroShot(Attack):
    """The backbone's zero-shot prediction from the uploaded A_L alone (no Δ)."""

    NAME = "public_head_zero_shot"
    NEEDS = frozenset({PIVOT_ACTIVATIONS})
    PUBLIC_COORDINATES = True
    DESCRIPTION = "activations only: public head on the last-layer pivot state"
    ACTIVATIONS_ONLY = True

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = pivot_data(view, self)
        return _scored(self, data, _zero_shot_probs(self, data, public))


def resolve_clusters(assignments: np.ndarray, n_classes: int, prior: np.ndarray) -> np.ndarray:
    """Name clusters by class prior: the k-th largest cluster gets the k-th most likely class."""
    sizes = np.bincount(assignments, minlength=n_classes)
    mapping = np.empty(n_classes, dtype=np.int64)
    mapping[np.argsort(-sizes, kind="stable")] = np.argsort(-prior, kind="stable")
    return mapping[assignments]


def class_prior(public: PublicKnowledge) -> np.ndarray:
    """Class frequencies among the public labeled examples (uniform if there are none)."""
    counts = np.bincount([e.label for e in public.labeled], minlength=public.task.n_classes).astype(float)
    return counts / counts.sum() if counts.sum() else np.full(public.task.n_classes, 1.0 / public.task.n_classes)


def _cluster(features: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    return KMeans(n_clusters=n_classes, n_init=10, random_state=seed).fit_predict(features)


class ClusteringDelta(Attack):
    """k-means on the received Δ (any invertible obfuscation of it keeps the clusters)."""

    NAME = "clustering_delta"
    NEEDS = frozenset({PIVOT_ACTIVATIONS, DELTA})
    DESCRIPTION = "k-means on Δ as received, clusters named by the public class prior"

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = pivot_data(view, self, need_delta=True)
        clusters = _cluster(StandardScaler().fit_transform(data.delta), public.task.n_classes, public.seed)
        return _result(self, data, resolve_clusters(clusters, public.task.n_classes, class_prior(public)))


class ClusteringActivations(Attack):
    """k-means on PCA of the last-layer pivot states (no Δ)."""

    NAME = "clustering_activations"
    NEEDS = frozenset({PIVOT_ACTIVATIONS})
    DESCRIPTION = "activations only: k-means on PCA-16 of the last-layer pivot state"
    ACTIVATIONS_ONLY = True

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = pivot_data(view, self)
        last = StandardScaler().fit_transform(data.activations[:, -1])
        reduced = PCA(n_components=min(16, *last.shape), random_state=public.seed).fit_transform(last)
        clusters = _cluster(reduced, public.task.n_classes, public.seed)
        return _result(self, data, resolve_clusters(clusters, public.task.n_classes, class_prior(public)))


class SideModelLabelling(Attack):
    """The server's trained φ plus the public backbone labels the training set:
    argmax(p_b + g_φ(A)) is the deployed model's prediction on each uploaded sample."""

    NAME = "side_model"
    NEEDS = frozenset({PIVOT_ACTIVATIONS, SIDE_NETWORK})
    DESCRIPTION = "server-held side network + public head label the cached training set"

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = pivot_data(view, self)
        network = load_side_network(self, view)
        with torch.inference_mode():
            side = network(torch.from_numpy(data.activations)).numpy()
        return _scored(self, data, _zero_shot_probs(self, data, public) + side)


def load_side_network(attack: Attack, view: ServerView,
                      cls: type[AdditiveSideNetwork] = AdditiveSideNetwork) -> torch.nn.Module:
    """φ (as `cls`) as the server checkpointed it."""
    path = view.side_network_path
    if not path.is_file():
        raise attack.missing("side_network.safetensors (a trained side network)")
    state, metadata = decode(path.read_bytes())
    try:
        architecture = json.loads(metadata["architecture"])
    except (KeyError, ValueError) as exc:
        raise ProtocolError(f"side-network checkpoint {path} lacks its architecture") from exc
    return network_from_arrays(state, architecture, cls).eval()


def probe_features(activations: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
    """Probe input: the mean direction of the upper half of the layers' pivot states plus z_b.

    Directions, not raw states: a mechanism that clips each layer (activation_noise) then
    leaves the probe's inputs where the public examples put them (raw states would put every
    clipped upload in the majority class; BENCHMARKS.md, "Activation protections"), and on
    plain states the probe scores about as well."""
    upper = layer_directions(activations[:, activations.shape[1] // 2:]).mean(axis=1)
    return np.concatenate([upper, zero_shot], axis=1)


class ModelCompletion(Attack):
    """A logistic probe fitted on k public labeled examples, applied to the uploads."""

    KIND = LABELS
    ACTIVATIONS_ONLY = True
    NEEDS = frozenset({PIVOT_ACTIVATIONS})
    PUBLIC_COORDINATES = True
    K = 0

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = pivot_data(view, self)
        if len(public.labeled) < self.K:
            raise self.lacks(f"{self.K} public labeled examples (got {len(public.labeled)})")
        # Features of the whole public labeled set (one cached pass), of which k are used.
        features = public.public_features(self.NAME, [e.text for e in public.labeled], data.layers)
        labeled = public.labeled[:self.K]
        backbone = public_backbone(public.backbone_name)
        last = backbone.n_layers
        train_x = probe_features(features.activations[:self.K], features.label_logits[:self.K])
        test_x = probe_features(data.activations, zero_shot_logits(backbone, public.task, data.layer(self, last)))
        scaler = StandardScaler().fit(train_x)
        probe = LogisticRegression(C=0.05, max_iter=2000).fit(scaler.transform(train_x), [e.label for e in labeled])
        # Classes absent from the k examples get probability 0: every task class keeps its column.
        scores = np.zeros((len(test_x), public.task.n_classes))
        scores[:, probe.classes_] = probe.predict_proba(scaler.transform(test_x))
        return _result(self, data, probe.predict(scaler.transform(test_x)), scores, k=self.K)


# One registered attack per number of public labeled examples.
MODEL_COMPLETIONS = sized_variants(ModelCompletion, "model_completion_k{k}", (8, 32, 128),
                                   "activations only: logistic probe trained on {k} public labeled examples",
                                   "Model completion with k = {k} public labeled examples.")
