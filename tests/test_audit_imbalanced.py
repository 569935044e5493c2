"""Label leakage on an imbalanced task (90% majority class): accuracy would call a constant guess a 90% leak;
the audit's balanced accuracy calls it no leak and a perfect attack a full leak."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attacks.base import LABELS, Attack, AttackResult, PublicKnowledge

from attacks.registry import ATTACKS, all_attacks
from attacks.view_data import pivot_data
from protocol.wire.messages import Upload
from protocol.data.tasks import SST2
from protocol.server.transcript import PIVOT_ACTIVATIONS, ServerView
from secure_assist.audit.verdict import headline, leak_level
from secure_assist.audit.auditor import run_attack
from secure_assist.metrics import balanced_accuracy, label_leak_metrics, macro_auc
from attack_views import random_ids, write_truth, write_view

N, MAJORITY = 200, 0.9


class AlwaysMajority(Attack):
    """Predicts the majority class for every upload (what a prior alone gives)."""

    NAME = "always_majority_test"
    KIND = LABELS
    ACTIVATIONS_ONLY = True
    NEEDS = frozenset({PIVOT_ACTIVATIONS})
    DESCRIPTION = "constant guess"

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = pivot_data(view, self)
        return AttackResult(attack=self.NAME, kind=LABELS, sample_ids=data.sample_ids,
                            predictions=np.zeros(len(data.sample_ids), dtype=np.int64))


@pytest.fixture()
def imbalanced_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    all_attacks()
    monkeypatch.setitem(ATTACKS, AlwaysMajority.NAME, AlwaysMajority)
    rng = np.random.default_rng(0)
    labels = (rng.random(N) > MAJORITY).astype(int)
    assert np.bincount(labels).max() / N >= 0.85
    delta = (np.eye(2)[labels] - 0.5).astype(np.float32)  # plain PAE: argmax Δ is the label
    ids = random_ids(N)
    write_view(tmp_path, [Upload(sample_ids=ids, activations=rng.normal(size=(N, 2, 64)).astype(np.float32),
                                 delta=delta, layers=(1, 2))])
    write_truth(tmp_path, ids, labels.tolist(), [f"text {i}" for i in range(N)])
    return tmp_path


def test_majority_guess_is_no_leak_and_a_perfect_attack_is_a_full_leak(imbalanced_view: Path) -> None:
    public = PublicKnowledge(backbone_name="tiny-llama", task=SST2)
    majority = run_attack(AlwaysMajority.NAME, imbalanced_view, public=public)
    assert majority["accuracy"] == majority["prior_baseline"] >= 0.85  # accuracy alone looks like a leak
    assert majority["balanced_accuracy"] == 0.5 and majority["balanced_accuracy_ci95"] == (0.5, 0.5)
    assert leak_level(majority) == "no leak" and headline(majority)["metric"] == "balanced_accuracy"
    perfect = run_attack("delta_argmax", imbalanced_view, public=public)
    assert perfect["balanced_accuracy"] == 1.0 and perfect["auc"] == 1.0
    assert leak_level(perfect) == "full leak"


def test_balanced_metrics_on_known_inputs() -> None:
    labels = np.array([0] * 9 + [1])
    assert balanced_accuracy(np.zeros(10), labels) == 0.5
    assert balanced_accuracy(np.array([0] * 8 + [1, 1]), labels) == pytest.approx((8 / 9 + 1) / 2)
    scores = np.stack([1 - np.linspace(0, 1, 10), np.linspace(0, 1, 10)], axis=1)
    assert macro_auc(scores, labels) == 1.0 and macro_auc(scores[:, ::-1], labels) == 0.0
    three = np.array([0, 1, 2, 2, 2, 2])
    report = label_leak_metrics(np.array([0, 1, 2, 2, 2, 0]), three, 3)
    assert report["balanced_accuracy"] == pytest.approx((1 + 1 + 0.75) / 3) and report["balanced_chance"] == 1 / 3
    assert "auc" not in report  # no scores, no AUC
