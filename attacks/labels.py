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
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from attacks.base import LABELS, Attack, AttackResult, PublicKnowledge, sized_variants
from attacks.public_model import public_backbone, softmax, zero_shot_logits
from attacks.tuning import public_choice, tuned_entry
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


# PCA dimensions of the activation clustering, the former fixed 16 first (a tie keeps it).
PCA_GRID = (16, 4, 64)


class ClusteringActivations(Attack):
    """k-means on PCA of the last-layer pivot states (no Δ)."""

    NAME = "clustering_activations"
    NEEDS = frozenset({PIVOT_ACTIVATIONS})
    DESCRIPTION = ("activations only: k-means on PCA of the last-layer pivot state (dimension chosen on the public "
                   "labeled examples)")
    ACTIVATIONS_ONLY = True

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = pivot_data(view, self)
        n_classes, prior = public.task.n_classes, class_prior(public)
        components, tuned = PCA_GRID[0], tuned_entry("pca_components", PCA_GRID[0], PCA_GRID,
                                                      "no public labeled examples: the default", "public_scores")
        if public.labeled:
            # The public labeled examples, clustered the same way, say which dimension separates the classes.
            states = public.public_features(self.NAME, [e.text for e in public.labeled], data.layers).activations
            labels = np.array([e.label for e in public.labeled])
            components, tuned = public_choice(PCA_GRID, lambda n: float(np.mean(
                self.clusters(states[:, -1], n, n_classes, prior, public.seed) == labels)), "pca_components")
        predictions = self.clusters(data.activations[:, -1], components, n_classes, prior, public.seed)
        return _result(self, data, predictions, **tuned)

    @staticmethod
    def clusters(states: np.ndarray, components: int, n_classes: int, prior: np.ndarray, seed: int) -> np.ndarray:
        """Class predictions: k-means on PCA-`components` of the standardized states, named by the prior."""
        scaled = StandardScaler().fit_transform(states)
        reduced = PCA(n_components=min(components, *scaled.shape), random_state=seed).fit_transform(scaled)
        return resolve_clusters(_cluster(reduced, n_classes, seed), n_classes, prior)


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


# Inverse regularization strengths of the probe, the former fixed 0.05 first (a tie keeps it).
PROBE_C_GRID = (0.05, 0.01, 0.2, 1.0)


def tuned_probe(x: np.ndarray, labels: np.ndarray) -> tuple[Pipeline, dict[str, object]]:
    """A standardized logistic probe on the public labeled examples, its C chosen from `PROBE_C_GRID` by
    stratified cross-validation on those examples (scikit-learn's grid search; the former default when a
    class has fewer than two examples to split); (probe refitted on all of them, details to record)."""
    probe = Pipeline([("scale", StandardScaler()), ("logistic", LogisticRegression(max_iter=2000))])
    per_class = np.unique(labels, return_counts=True)[1]
    folds = min(3, int(per_class.min()))
    if len(per_class) < 2 or folds < 2:
        probe.set_params(logistic__C=PROBE_C_GRID[0])
        return probe.fit(x, labels), tuned_entry("C", PROBE_C_GRID[0], PROBE_C_GRID,
                                                 "too few examples per class to cross-validate", "public_cv_scores")
    search = GridSearchCV(probe, {"logistic__C": list(PROBE_C_GRID)}, cv=StratifiedKFold(folds), scoring="accuracy")
    search.fit(x, labels)
    return search.best_estimator_, tuned_entry("C", search.best_params_["logistic__C"], PROBE_C_GRID,
                                               [float(v) for v in search.cv_results_["mean_test_score"]],
                                               "public_cv_scores")


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
        probe, tuned = tuned_probe(train_x, np.array([e.label for e in labeled]))
        # Classes absent from the k examples get probability 0: every task class keeps its column.
        scores = np.zeros((len(test_x), public.task.n_classes))
        scores[:, probe.classes_] = probe.predict_proba(test_x)
        return _result(self, data, probe.predict(test_x), scores, k=self.K, **tuned)


# One registered attack per number of public labeled examples.
MODEL_COMPLETIONS = sized_variants(ModelCompletion, "model_completion_k{k}", (8, 32, 128),
                                   "activations only: logistic probe trained on {k} public labeled examples",
                                   "Model completion with k = {k} public labeled examples.")
