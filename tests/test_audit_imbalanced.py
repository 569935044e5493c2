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
    # One-vs-rest at low FPR: ~180 negatives of the minority class resolve 1% but not 0.1%; the ~20 of the
    # majority class resolve neither. The constant guess never names the minority class.
    assert perfect["low_fpr"]["1"]["tpr_at_0.01_fpr"] == 1.0 and perfect["low_fpr"]["1"]["tpr_at_0.001_fpr"] is None
    assert perfect["low_fpr"]["0"]["tpr_at_0.01_fpr"] is None
    assert majority["low_fpr"]["1"]["tpr_at_0.01_fpr"] == 0.0


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


def test_tpr_at_low_fpr_per_class_on_known_inputs() -> None:
    # 1,000 samples of each class. Class 1's score: negatives spread over [0, 1), 300 positives above all of
    # them and 700 in the middle, so 300 positives pass at 1% and at 0.1% FPR; class 0's score is 1 minus it.
    labels = np.repeat([0, 1], 1000)
    score_1 = np.concatenate([np.arange(1000) / 1000, [2.0] * 300, [0.5] * 700])
    report = label_leak_metrics(np.zeros(2000, int), labels, 2, np.stack([1 - score_1, score_1], axis=1))
    assert report["low_fpr"]["1"]["tpr_at_0.01_fpr"] == pytest.approx(0.3)
    assert report["low_fpr"]["1"]["tpr_at_0.001_fpr"] == pytest.approx(0.3)
    low, high = report["low_fpr"]["1"]["tpr_at_0.01_fpr_ci95"]
    assert low < 0.3 < high and high - low < 0.1
    # Class 0 at 1% FPR: ten of class 1's 700 tied middle scores may not pass, so the threshold sits at
    # 0.5 and only class 0's scores above it (the 500 of the lower half) count.
    assert report["low_fpr"]["0"]["tpr_at_0.01_fpr"] == pytest.approx(0.5)
    # A hard-label attack: its one-hot prediction names class 1 for 5 negatives (0.5%) and 800 positives.
    predictions = np.concatenate([[1] * 5, [0] * 995, [1] * 800, [0] * 200])
    hard = label_leak_metrics(predictions, labels, 2)["low_fpr"]["1"]
    assert hard["tpr_at_0.01_fpr"] == pytest.approx(0.8) and hard["tpr_at_0.001_fpr"] == 0.0
