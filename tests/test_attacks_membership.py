"""Membership inference: the attacks' maths on synthetic data with known answers, a positive
control (an overfit side network whose members a real attack finds, on real texts through a
tiny backbone) beside the backbone alone, and the membership fields of a tiny-model audit."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm, spearmanr

from attacks.base import MEMBERSHIP
from attacks.membership import (
    TEMPERATURE, LiraOnline, MembershipTarget, gaussian_fit, lira_offline, lira_online, logit_confidence,
    rmia_offline, true_label_probability,
)
from attacks.membership_references import (
    LabeledFeatures, TrainingRecipe, deployed_scores, inclusion, train_references, train_side_network,
)
from attacks.registry import ATTACKS
from protocol.data.tasks import SST2, builtin_split, sample
from protocol.device.features import encode_dataset
from protocol.device.forward_device import DeviceRole
from protocol.errors import UserInputError
from protocol.model.backbone import Backbone
from protocol.server.training_settings import ServerTraining
from secure_assist.metrics import auc_with_interval, low_fpr_metrics

MEMBERSHIP_ATTACKS = tuple(name for name, cls in ATTACKS.items() if cls.KIND == MEMBERSHIP)


def test_membership_attacks_are_registered() -> None:
    assert set(MEMBERSHIP_ATTACKS) == {"lira_online", "lira_offline", "rmia_offline"}


def test_logit_confidence_is_the_log_odds_of_the_true_label() -> None:
    scores = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    labels = np.array([0, 0, 1])
    # Two classes: softmax(s / T) makes φ the margin over T.
    expected = (scores[np.arange(3), labels] - scores[np.arange(3), 1 - labels]) / TEMPERATURE
    assert np.allclose(logit_confidence(scores, labels), expected)
    three = np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    p = np.exp(three / TEMPERATURE) / np.exp(three / TEMPERATURE).sum(axis=1, keepdims=True)
    truth = np.array([1, 2])
    p_true = p[np.arange(2), truth]
    assert np.allclose(logit_confidence(three, truth), np.log(p_true / (1 - p_true)))
    assert np.allclose(true_label_probability(three, truth), p_true)
    # Stable where p_y rounds to 1 in float64.
    assert np.isfinite(logit_confidence(np.array([[10.0, -10.0]]), np.array([0]))).all()


@pytest.fixture(scope="module")
def gaussian_world() -> dict[str, np.ndarray]:
    """Candidates whose confidence is N(μ_out, σ) when out and N(μ_out + 1, σ) when in, with many references."""
    rng = np.random.default_rng(0)
    n, references, sigma = 400, 200, 0.5
    mu_out = rng.normal(0, 1, n)
    included = rng.random((references, n)) < 0.5
    reference = mu_out + included + rng.normal(0, sigma, (references, n))
    members = np.arange(n) < n // 2
    target = mu_out + members + rng.normal(0, sigma, n)
    return {"mu_out": mu_out, "included": included, "reference": reference, "members": members,
            "target": target, "sigma": np.array(sigma)}


def test_gaussian_fits_recover_each_candidates_in_and_out_distribution(gaussian_world: dict) -> None:
    w = gaussian_world
    mean_in, std_in = gaussian_fit(w["reference"], w["included"], per_candidate_variance=True)
    mean_out, std_out = gaussian_fit(w["reference"], ~w["included"], per_candidate_variance=True)
    # About 100 references per side: standard error 0.05 on each mean.
    assert np.abs(mean_in - (w["mu_out"] + 1)).max() < 0.25
    assert np.abs(mean_out - w["mu_out"]).max() < 0.25
    assert np.abs(std_in - 0.5).max() < 0.2 and np.abs(std_out - 0.5).max() < 0.2
    _, pooled = gaussian_fit(w["reference"], w["included"], per_candidate_variance=False)
    assert np.allclose(pooled, 0.5, atol=0.02)


def test_lira_scores_follow_the_exact_likelihood_ratio(gaussian_world: dict) -> None:
    w = gaussian_world
    sigma = float(w["sigma"])
    exact_online = norm.logpdf(w["target"], w["mu_out"] + 1, sigma) - norm.logpdf(w["target"], w["mu_out"], sigma)
    exact_offline = -norm.logsf(w["target"], w["mu_out"], sigma)
    online = lira_online(w["target"], w["reference"], w["included"])
    offline = lira_offline(w["target"], w["reference"], w["included"])
    assert spearmanr(online, exact_online).statistic > 0.97
    assert spearmanr(offline, exact_offline).statistic > 0.97
    labels = w["members"].astype(int)
    # Calibrating each candidate beats the raw confidence by far (μ_out varies between candidates).
    raw = auc_with_interval(w["target"], labels)["auc"]
    assert auc_with_interval(online, labels)["auc"] > raw + 0.1
    assert auc_with_interval(offline, labels)["auc"] > raw + 0.1


def test_lira_with_few_references_and_a_candidate_on_one_side_only(gaussian_world: dict) -> None:
    w = gaussian_world
    included = w["included"][:4].copy()
    included[:, 0] = False  # no reference trained on candidate 0
    included[:, 1] = True  # every reference trained on candidate 1
    for attack in (lira_online, lira_offline):
        scores = attack(w["target"], w["reference"][:4], included)
        assert np.isfinite(scores).all()


def test_rmia_offline_score_by_hand() -> None:
    # Pr(x) = 0.65 · 0.5 + 0.35 = 0.675: LR(x) = 0.9 / 0.675 = 1.33 and 0.5 / 0.675 = 0.74;
    # LR(z) = 1, 1.2 and 1.6: the first candidate beats two of three, the second none.
    scores = rmia_offline(np.array([0.9, 0.5]), np.array([0.5, 0.5]), np.array([0.5, 0.6, 0.8]),
                          np.array([0.5, 0.5, 0.5]), a=0.3, gamma=1.0)
    assert np.allclose(scores, [2 / 3, 0.0])
    assert np.allclose(rmia_offline(np.array([0.9]), np.array([0.5]), np.array([0.5, 0.6, 0.8]),
                                    np.array([0.5, 0.5, 0.5]), a=0.3, gamma=1.3), [1 / 3])


def test_reference_inclusion_sizes() -> None:
    masks = inclusion(8, 100, 30, seed=0)
    assert (masks.sum(axis=1) == 30).all()
    assert (inclusion(8, 100, 1000, seed=0).sum(axis=1) == 50).all()


@pytest.fixture(scope="module")
def sst2_features(tiny_llama: Backbone) -> dict[str, LabeledFeatures]:
    """Tiny-backbone pivot features of 200 members, 500 non-members and 300 population rows of SST-2's
    training split (disjoint)."""
    rows = sample(builtin_split("sst2", "train"), 1000, seed=3)
    role = DeviceRole(tiny_llama, SST2, progress=False)

    def features(examples: list) -> LabeledFeatures:
        pivots = encode_dataset(role, examples, use_cache=False)
        return LabeledFeatures(pivots.activations.numpy(), pivots.label_logits.numpy(),
                               np.array([e.label for e in examples]))

    return {"members": features(rows[:200]), "non_members": features(rows[200:700]),
            "population": features(rows[700:])}


def test_positive_control_overfit_side_network_leaks_membership(sst2_features: dict) -> None:
    members, non_members = sst2_features["members"], sst2_features["non_members"]
    # Many epochs, no weight decay, adapters at the full rate, 200 samples: it memorises them.
    recipe = TrainingRecipe(ServerTraining(weight_decay=0.0, adapter_lr_scale=1.0), epochs=60, upload_size=16)
    target = train_side_network(members, recipe, seed=0)
    candidates = LabeledFeatures.concatenate([members, non_members])
    references = train_references(candidates, sst2_features["population"], recipe, count=8, size=len(members),
                                  seed=1, progress=False)
    truth = np.r_[np.ones(len(members)), np.zeros(len(non_members))].astype(int)
    population = sst2_features["population"]

    def attacked(side: object) -> dict:
        deployed = MembershipTarget(deployed_scores(side, candidates), candidates.labels,
                                    deployed_scores(side, population), population.labels)
        scores = LiraOnline().score(deployed, references)
        return {**low_fpr_metrics(scores, truth), "auc": auc_with_interval(scores, truth)["auc"]}

    overfit = attacked(target)
    assert overfit["tpr_at_0.01_fpr"] > 0.05  # five times what chance finds at 1% FPR (measured: 0.15)
    assert overfit["auc"] > 0.7
    # Negative control: the backbone alone was trained on none of them.
    backbone = attacked(None)
    assert backbone["auc"] < 0.6 and backbone["tpr_at_0.01_fpr"] < 0.06


def test_membership_references_must_not_be_negative(tmp_path: Path) -> None:
    from secure_assist.audit.config import AuditConfig

    with pytest.raises(UserInputError, match="membership_references"):
        AuditConfig(model="tiny-llama", membership_references=-1, output=str(tmp_path))


def test_audit_reports_membership_of_every_rows_deployed_model(tmp_path: Path) -> None:
    from secure_assist.audit.config import AuditConfig
    from secure_assist.audit.plots import MEMBERSHIP_ROC
    from secure_assist.audit.report import write_reports
    from secure_assist.audit.runner import run_audit

    config = AuditConfig(model="tiny-llama", train_samples=40, eval_samples=16, epochs=2, variants=("none",),
                         attacks=("delta_argmax",) + MEMBERSHIP_ATTACKS, membership_references=4,
                         output=str(tmp_path / "audit"))
    report = run_audit(config, progress=False)
    rows = {r["variant"]: r for r in report["references"] + report["variants"]}
    assert set(rows) == {"zero_shot", "device_local", "none"}
    for row in rows.values():
        membership = row["membership"]
        assert membership["status"] == "ok" and membership["references"] == 4
        # Every row holds 10 of its 40 samples out for its safeguard: members are the 30 it trained on.
        assert membership["members"] == 30 and membership["non_members"] == 1000
        assert {a["attack"] for a in membership["attacks"]} == set(MEMBERSHIP_ATTACKS)
        for attack in membership["attacks"]:
            assert 0.5 <= attack["auc"] <= 1 and attack["auc_ci95"][0] <= attack["auc"] <= attack["auc_ci95"][1]
            for key in ("tpr_at_0.01_fpr", "tpr_at_0.001_fpr"):
                assert 0 <= attack[key] <= 1 and len(attack[key + "_ci95"]) == 2
            assert len(attack["roc"]["fpr"]) == len(attack["roc"]["tpr"])
    # Membership attacks read deployed models, not the server's view: no view rows for them.
    assert [a["attack"] for a in rows["none"]["attacks"]] == ["delta_argmax"]
    assert report["membership_seconds"] > 0
    json_path, markdown, page = write_reports(report, config.output)
    assert json.loads(json_path.read_text())["references"][0]["membership"]["attacks"]
    assert "Membership inference on the deployed model" in markdown.read_text()
    assert html.escape(MEMBERSHIP_ROC) in page.read_text()
