"""Input reconstruction from the server's view, with the public backbone and public text.

Pivot-only views (PAE) hold one state per layer at the last prompt token; full-activation
views (MobiLLM-style, split learning) hold every token's state and fall to per-position
nearest-embedding inversion.
"""

from __future__ import annotations

import hashlib

import re
from collections import Counter
from typing import Callable

import numpy as np
import torch

from attacks.base import RECONSTRUCTION, Attack, AttackResult, PublicKnowledge
from attacks.public_model import input_embeddings, logit_lens_top, public_backbone, token_states
from attacks.rotation_math import nearest_states
from attacks.tuning import choose_by_folds
from attacks.view_data import full_activation_data, layer_directions, pivot_data
from protocol.model.backbone import Backbone
from protocol.data.tasks import TaskSpec
from protocol.server.transcript import FULL_ACTIVATIONS, PIVOT_ACTIVATIONS, ServerView

_WORD = re.compile(r"[\w']+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (the unit of bag-of-words metrics)."""
    return _WORD.findall(text.lower())


def _template_words(task: TaskSpec) -> set[str]:
    return set(words(task.template.replace("{text}", " ")))


class EmbeddingIndex:
    """Cosine nearest neighbours among the public input embeddings, all vectors centred on
    the embedding mean (the shared offset would otherwise dominate every cosine)."""

    def __init__(self, backbone: Backbone) -> None:
        table = input_embeddings(backbone)
        self._centre = table.mean(axis=0)
        self._table = self._unit(table)

    def _unit(self, matrix: np.ndarray) -> np.ndarray:
        centred = matrix - self._centre
        return centred / np.linalg.norm(centred, axis=1, keepdims=True).clip(1e-6)

    def nearest(self, states: np.ndarray) -> np.ndarray:
        """Token id nearest to each row of `states`."""
        return (self._unit(states) @ self._table.T).argmax(axis=1)


# Samples whose states go through one vocabulary-sized product: (samples × layers) rows at a time keep the
# product efficient (one sample's few rows waste most of it) and its (rows, vocabulary) result near 200 MB.
SAMPLES_PER_PRODUCT = 32


def per_sample_tokens(states: np.ndarray, tokens: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """`tokens` (rows (m, d) -> token ids (m, ...)) applied to every sample's (L, d) states, a few samples a
    product; one (L, ...) array per sample."""
    samples, layers = states.shape[:2]
    found: list[np.ndarray] = []
    for start in range(0, samples, SAMPLES_PER_PRODUCT):
        chunk = states[start:start + SAMPLES_PER_PRODUCT]
        ids = np.asarray(tokens(chunk.reshape(-1, chunk.shape[-1])))
        found += list(ids.reshape(len(chunk), layers, *ids.shape[1:]))
    return found


def _bag_text(backbone: Backbone, task: TaskSpec, token_ids: list[int]) -> str:
    """Decoded tokens as a bag of words, template words removed (they are public)."""
    template = _template_words(task)
    found = [w for t in dict.fromkeys(token_ids) for w in words(backbone.tokenizer.decode([t]))]
    return " ".join(w for w in dict.fromkeys(found) if w not in template)


class PivotNearestEmbedding(Attack):
    """Nearest input embedding (cosine, centred) of every layer's pivot state."""

    NAME = "pivot_nearest_embedding"
    NEEDS = frozenset({PIVOT_ACTIVATIONS})
    PUBLIC_COORDINATES = True
    KIND = RECONSTRUCTION
    DESCRIPTION = "nearest public input embedding of each uploaded pivot state"

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = pivot_data(view, self)
        backbone = public_backbone(public.backbone_name)
        index = EmbeddingIndex(backbone)
        texts = [_bag_text(backbone, public.task, ids.tolist())
                 for ids in per_sample_tokens(data.activations, index.nearest)]
        return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=data.sample_ids, texts=texts)


class PivotLogitLens(Attack):
    """Top tokens of the public final norm + LM head applied to every layer's pivot state."""

    NAME = "pivot_logit_lens"
    NEEDS = frozenset({PIVOT_ACTIVATIONS})
    PUBLIC_COORDINATES = True
    KIND = RECONSTRUCTION
    DESCRIPTION = "logit lens (public norm + head) on every uploaded pivot state, top-3 tokens"
    TOP = 3

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = pivot_data(view, self)
        backbone = public_backbone(public.backbone_name)
        texts = [_bag_text(backbone, public.task, top.ravel().tolist())
                 for top in per_sample_tokens(data.activations, lambda rows: logit_lens_top(backbone, rows, self.TOP))]
        return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=data.sample_ids, texts=texts)


def _inversion_inputs(activations: np.ndarray) -> np.ndarray:
    """Every fourth layer's pivot state direction, concatenated (keeps the model small; directions
    survive a mechanism's per-layer clip or rescaling)."""
    return layer_directions(activations[:, ::4]).reshape(len(activations), -1)


# LearnedInversion fits keyed by a digest of their inputs (see `LearnedInversion._trained`).
_TRAINED: dict[str, tuple[torch.nn.Module, float]] = {}


class LearnedInversion(Attack):
    """A multi-label linear model, trained on public text, from pivot states to the
    words of the input; the decision threshold is tuned on held-out public text."""

    NAME = "learned_inversion"
    NEEDS = frozenset({PIVOT_ACTIVATIONS})
    PUBLIC_COORDINATES = True
    KIND = RECONSTRUCTION
    DESCRIPTION = "bag-of-words inversion model trained on public text features"
    VOCABULARY = 2000
    EPOCHS = 60

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = pivot_data(view, self)
        corpus = list(public.unlabeled_texts)
        if len(corpus) < 50:
            raise self.lacks(f"public unlabeled text (>= 50 texts, got {len(corpus)})")
        features = public.public_features(self.NAME, corpus, data.layers)
        vocab = [w for w, _ in Counter(w for t in corpus for w in set(words(t))).most_common(self.VOCABULARY)]
        index = {w: i for i, w in enumerate(vocab)}
        targets = np.zeros((len(corpus), len(vocab)), np.float32)
        for row, text in enumerate(corpus):
            targets[row, [index[w] for w in set(words(text)) if w in index]] = 1.0
        x = _inversion_inputs(features.activations)
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-3
        model, threshold = self._trained((x - mean) / scale, targets, public.seed)
        with torch.no_grad():
            probs = torch.sigmoid(model(torch.from_numpy((_inversion_inputs(data.activations) - mean) / scale))).numpy()
        texts = [" ".join(vocab[i] for i in np.flatnonzero(row >= threshold)) for row in probs]
        return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=data.sample_ids, texts=texts,
                            details={"threshold": threshold, "public_texts": len(corpus), "vocabulary": len(vocab)})

    def _trained(self, x: np.ndarray, y: np.ndarray, seed: int) -> tuple[torch.nn.Module, float]:
        """The inversion model, fitted on the first 80% of the public text, and its threshold, tuned on the rest
        (one fit: refitting on all of it cost an audit as much again for 20% more text).

        Public knowledge only: an audit attacks several views with the same public corpus,
        so the fit is memoized on a digest of its inputs (a pure function of them)."""
        key = hashlib.sha256(x.tobytes() + y.tobytes() + str((seed, self.EPOCHS)).encode()).hexdigest()
        if key not in _TRAINED:
            cut = int(0.8 * len(x))
            model = self._fit(x[:cut], y[:cut], seed)
            _TRAINED.clear()  # one public corpus at a time: bounded memory
            _TRAINED[key] = (model, self._threshold(model, x[cut:], y[cut:]))
        return _TRAINED[key]

    def _fit(self, x: np.ndarray, y: np.ndarray, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = torch.nn.Linear(x.shape[1], y.shape[1])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        inputs, targets = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)
        for _ in range(self.EPOCHS):
            for batch in torch.randperm(len(inputs)).split(128):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs[batch]), targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return model.eval()

    @staticmethod
    def _threshold(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
        with torch.no_grad():
            probs = torch.sigmoid(model(torch.from_numpy(x.astype(np.float32)))).numpy()
        best, best_f1 = 0.5, -1.0
        for threshold in np.linspace(0.05, 0.9, 18):
            chosen = probs >= threshold
            hits = (chosen & (y > 0)).sum()
            f1 = 2 * hits / max(1, chosen.sum() + (y > 0).sum())
            if f1 > best_f1:
                best, best_f1 = float(threshold), f1
        return best


def candidate_pool(attack: Attack, public: PublicKnowledge, layers: tuple[int, ...]) -> tuple[list[str], np.ndarray]:
    """The candidate texts and their public-backbone pivot states of `layers`."""
    pool = list(public.candidate_texts)
    if not pool:
        raise attack.lacks("a public candidate pool (candidate_texts)")
    return pool, public.public_features(attack.NAME, pool, layers).activations


class CandidateMatching(Attack):
    """Exact matching: the public backbone's pivot states of each candidate text are
    compared with the uploaded ones; the nearest candidate is the reconstruction."""

    NAME = "candidate_matching"
    NEEDS = frozenset({PIVOT_ACTIVATIONS})
    PUBLIC_COORDINATES = True
    KIND = RECONSTRUCTION
    DESCRIPTION = "nearest candidate text by public-backbone pivot states"

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = pivot_data(view, self)
        pool, candidates = candidate_pool(self, public, data.layers)
        matches = self.match(data.activations, candidates)
        return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=data.sample_ids,
                            texts=[pool[i] for i in matches], details={"pool": len(pool)})

    def match(self, states: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The index of each uploaded sample's candidate: nearest by per-layer directions, which a
        clip or rescaling of each layer's vector leaves in place (under activation_noise the clipped
        raw states lie far from every public candidate's; BENCHMARKS.md, "Activation protections")."""
        return nearest_states(layer_directions(states), layer_directions(candidates))


def strip_template(task: TaskSpec, prompt: str) -> str:
    """The text slot of a reconstructed prompt (the template is public)."""
    prefix, _, suffix = task.template.partition("{text}")
    if prompt.startswith(prefix):
        prompt = prompt[len(prefix):]
    if suffix and prompt.endswith(suffix):
        prompt = prompt[:-len(suffix)]
    return prompt


class FullActivationInversion(Attack):
    """Per-position inversion of the earliest uploaded layer's all-token states: a ridge
    map from that layer's states to input embeddings, fitted on public text run through
    the bottom of the public backbone, then the nearest embedding."""

    NAME = "full_activation_inversion"
    NEEDS = frozenset({FULL_ACTIVATIONS})
    KIND = RECONSTRUCTION
    DESCRIPTION = "per-token inversion (public ridge map + nearest embedding) of all-token activations"
    PUBLIC_TEXTS = 200

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = full_activation_data(view, self)
        backbone = public_backbone(public.backbone_name)
        corpus = list(public.unlabeled_texts[:self.PUBLIC_TEXTS])
        if len(corpus) < 20:
            raise self.lacks(f"public unlabeled text (>= 20 texts, got {len(corpus)})")
        states, tokens = [], []
        for start in range(0, len(corpus), 32):
            batch_states, batch_tokens = token_states(backbone, public.task, corpus[start:start + 32], data.first_layer)
            states.append(batch_states)
            tokens.append(batch_tokens)
        index = EmbeddingIndex(backbone)
        mapping, tuned = tuned_ridge_map(np.concatenate(states), np.concatenate(tokens), backbone, index)
        token_ids, texts = [], []
        for sample in data.activations:
            ids = index.nearest(mapping(sample[0])).tolist()
            token_ids.append(ids)
            texts.append(strip_template(public.task, backbone.tokenizer.decode(ids)))
        return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=data.sample_ids, texts=texts,
                            token_ids=token_ids, details={"layer": data.first_layer, **tuned,
                                                          "public_tokens": int(sum(len(t) for t in tokens))})


def ridge_map(states: np.ndarray, targets: np.ndarray, ridge: float) -> Callable[[np.ndarray], np.ndarray]:
    """x -> (x - mean) W + target mean, W the ridge solution on centred public pairs."""
    mean, target_mean = states.mean(axis=0), targets.mean(axis=0)
    centred = states - mean
    weights = np.linalg.solve(centred.T @ centred + ridge * np.eye(states.shape[1]), centred.T @ (targets - target_mean))

    def apply(x: np.ndarray) -> np.ndarray:
        return (x - mean) @ weights + target_mean

    return apply


# Ridge strengths the inversion attacks choose from, the former fixed 1.0 first; held-out public positions
# scored per fold (each costs a vocabulary-sized nearest-embedding search).
RIDGE_GRID = (1.0, 0.1, 10.0, 100.0)
CV_POSITIONS = 1000


def tuned_ridge_map(states: np.ndarray, tokens: np.ndarray, backbone: Backbone, index: EmbeddingIndex
                    ) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, object]]:
    """`ridge_map` from public states to the input embeddings of their tokens, its ridge chosen from
    `RIDGE_GRID` by the nearest-embedding token accuracy on held-out public positions; (map, details)."""
    targets = input_embeddings(backbone)[tokens]

    def accuracy(ridge: float, train: np.ndarray, test: np.ndarray) -> float:
        test = test[::max(1, len(test) // CV_POSITIONS)]
        mapped = ridge_map(states[train], targets[train], ridge)(states[test])
        return float((index.nearest(mapped) == tokens[test]).mean())

    ridge, details = choose_by_folds(RIDGE_GRID, accuracy, len(states), "ridge")
    return ridge_map(states, targets, ridge), details
