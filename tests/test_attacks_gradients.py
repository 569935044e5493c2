"""Split-learning gradient attacks on synthetic gradients with a known separation, and the
split-learning baseline end to end on a tiny model (its view decodes and leaks)."""

from __future__ import annotations

import numpy as np

from attack_views import random_ids, write_truth, write_view
from attacks.base import PublicKnowledge
from protocol.model.backbone import load_backbone
from secure_assist.references.split_learning import run_split_learning
from protocol.wire.split_messages import SplitBackward
from protocol.data.tasks import SST2, builtin_split
from secure_assist.audit.auditor import audit, run_attack
from secure_assist.training.workdir import write_ground_truth

N, T, D = 120, 5, 16


def _gradient_view(tmp_path, make_rows):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, N)
    grads = np.zeros((N, T, D), np.float32)
    pivot = rng.integers(0, T, N)
    grads[np.arange(N), pivot] = make_rows(labels, rng)
    ids = random_ids(N)
    write_view(tmp_path, [SplitBackward(sample_ids=ids, output_gradients=grads)])
    write_truth(tmp_path, ids, labels.tolist(), ["t"] * N)


def test_norm_attack_separates_known_norms(tmp_path):
    def rows(labels, rng):
        unit = rng.normal(size=(N, D))
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        return unit * np.where(labels == 1, 3.0, 1.0)[:, None]

    _gradient_view(tmp_path, rows)
    report = run_attack("gradient_norm", tmp_path, public=PublicKnowledge("tiny-llama", SST2))
    assert report["auc"] == 1.0 and report["chance"] == 0.5


def test_cosine_attack_separates_opposite_directions(tmp_path):
    def rows(labels, rng):
        direction = rng.normal(size=D)
        # Equal norms: only the direction carries the label, so the norm attack is at chance.
        return np.where(labels == 1, 1.0, -1.0)[:, None] * direction + 0.1 * rng.normal(size=(N, D))

    _gradient_view(tmp_path, rows)
    public = PublicKnowledge("tiny-llama", SST2)
    assert run_attack("gradient_cosine", tmp_path, public=public)["auc"] == 1.0
    assert run_attack("gradient_norm", tmp_path, public=public)["auc"] < 0.75


def test_split_learning_view_leaks_labels_and_tokens(tmp_path):
    train = builtin_split("sst2", "train")[:16]
    run = run_split_learning(load_backbone("tiny-llama"), load_backbone("tiny-llama"), SST2, train,
                             tmp_path / "server", cut_layer=1, batch_size=8, progress=False)
    assert len(run.losses) == 2 and run.bytes_down > 0
    write_ground_truth(tmp_path / "device" / "ground_truth.jsonl", run.sample_ids, train)
    public = PublicKnowledge("tiny-llama", SST2,
                             unlabeled_texts=tuple(e.text for e in builtin_split("sst2", "train")[100:200]))
    assert run_attack("gradient_cosine", tmp_path, public=public)["auc"] >= 0.9
    result, report = audit("full_activation_inversion", tmp_path, public=public)
    assert report["position_token_accuracy"] >= 0.95 and result.details["layer"] == 1
