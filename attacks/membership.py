"""Membership inference on a deployed model: was this sample in its training set?

The target is a deployed model (public backbone + the side output a device deploys; the
backbone alone for zero-shot) and a set of candidate samples whose records the attacker
holds; whoever holds the model (a device sharing it, a member of a pool) can compute its
outputs on them. The attacker calibrates those outputs against reference models it trained
itself (`attacks.membership_references`) and returns one score per candidate, higher for
"member". The auditor knows who was a member and scores the attack (AUC, TPR at low FPR).

- LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles"): the
  logit-scaled confidence φ = log(p_y / (1 - p_y)) on the true label, with per-candidate
  Gaussian fits of φ under the references that trained on it ("in") and those that did not
  ("out"). Online: the likelihood ratio of in against out. Offline: a one-sided test against
  the out distribution alone.
- RMIA (Zarifzadeh et al. 2024), offline: LR(x) = Pr(x|θ) / Pr(x), with Pr(x) from the out
  references through the a-approximation Pr(x) ≈ ((1 + a)/2)·Pr_out(x) + (1 - a)/2; the score
  is the share of population rows z with LR(x) / LR(z) > γ.

A deployed model outputs p_b + g(A), probability-like values that need not lie in [0, 1]; the
tests read them as the class distribution softmax(scores / TEMPERATURE) *(choice)*. For two
classes LiRA's φ is then the score margin over TEMPERATURE, so LiRA does not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax, logsumexp
from scipy.stats import norm

from attacks.base import MEMBERSHIP, Attack, AttackResult, PublicKnowledge
from attacks.membership_references import ReferenceOutputs
from protocol.server.transcript import ServerView

TEMPERATURE = 0.1
# Below this many references the per-candidate variances are too noisy: LiRA then fits one
# variance for all candidates (Carlini et al. do so for small numbers of shadow models).
PER_CANDIDATE_VARIANCE_FROM = 64
# RMIA's offline a-approximation and its likelihood-ratio threshold γ (the paper's defaults range).
RMIA_A = 0.3
RMIA_GAMMA = 1.0
MIN_STD = 1e-3


@dataclass(frozen=True)
class MembershipTarget:
    """A deployed model's outputs on the candidates and on public population rows, with their labels."""

    candidate_scores: np.ndarray  # (n, C) p_b + g(A) of each candidate
    candidate_labels: np.ndarray  # (n,)
    population_scores: np.ndarray  # (m, C)
    population_labels: np.ndarray  # (m,)


def log_probabilities(scores: np.ndarray) -> np.ndarray:
    """log softmax(scores / TEMPERATURE) over the last axis."""
    return log_softmax(np.asarray(scores, dtype=np.float64) / TEMPERATURE, axis=-1)


def true_label_probability(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p_y of each row (leading axes of `scores` broadcast against `labels`)."""
    log_p = log_probabilities(scores)
    return np.exp(np.take_along_axis(log_p, np.broadcast_to(labels, log_p.shape[:-1])[..., None], -1)[..., 0])


def logit_confidence(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's φ = log p_y - log(1 - p_y), computed from log-probabilities (stable at p_y → 1)."""
    log_p = log_probabilities(scores)
    index = np.broadcast_to(labels, log_p.shape[:-1])[..., None]
    true = np.take_along_axis(log_p, index, -1)[..., 0]
    others = log_p.copy()
    np.put_along_axis(others, index, -np.inf, -1)
    return true - logsumexp(others, axis=-1)


def gaussian_fit(values: np.ndarray, mask: np.ndarray, per_candidate_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-candidate mean and standard deviation of `values` (R, n) over the references where
    `mask` (R, n) holds; nan mean where none does. Without `per_candidate_variance`, one
    standard deviation pooled over every candidate's deviations from its own mean."""
    counts = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(mask, values, 0.0).sum(axis=0) / counts
        squares = np.where(mask, (values - mean) ** 2, 0.0)
        if per_candidate_variance:
            std = np.sqrt(squares.sum(axis=0) / np.maximum(counts - 1, 1))
        else:
            std = np.full(values.shape[1], np.sqrt(squares.sum() / max(int(counts.sum() - (counts > 0).sum()), 1)))
    return mean, np.nan_to_num(std, nan=MIN_STD).clip(MIN_STD)


def _filled(mean: np.ndarray, other: np.ndarray) -> np.ndarray:
    """`mean`, where a candidate has no reference on its side: the other side's mean plus the
    average difference between the sides over the candidates that have both."""
    both = ~np.isnan(mean) & ~np.isnan(other)
    shift = float(np.mean(mean[both] - other[both])) if both.any() else 0.0
    return np.where(np.isnan(mean), other + shift, mean)


def lira_online(target: np.ndarray, reference: np.ndarray, included: np.ndarray) -> np.ndarray:
    """log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out) per candidate: φ of the target (n,), φ of
    the references (R, n), whether each reference trained on each candidate (R, n)."""
    per_candidate = len(reference) >= PER_CANDIDATE_VARIANCE_FROM
    mu_in, sd_in = gaussian_fit(reference, included, per_candidate)
    mu_out, sd_out = gaussian_fit(reference, ~included, per_candidate)
    mu_in, mu_out = _filled(mu_in, mu_out), _filled(mu_out, mu_in)
    return norm.logpdf(target, mu_in, sd_in) - norm.logpdf(target, mu_out, sd_out)


def lira_offline(target: np.ndarray, reference: np.ndarray, included: np.ndarray) -> np.ndarray:
    """−log Pr[Z > φ] for Z ~ N(μ_out, σ_out): how far above the out distribution the target's φ lies."""
    per_candidate = len(reference) >= PER_CANDIDATE_VARIANCE_FROM
    mu_out, sd_out = gaussian_fit(reference, ~included, per_candidate)
    mu_in, _ = gaussian_fit(reference, included, per_candidate)
    mu_out = _filled(mu_out, mu_in)
    return -norm.logsf(target, mu_out, sd_out)


def rmia_offline(target_x: np.ndarray, out_x: np.ndarray, target_z: np.ndarray, reference_z: np.ndarray,
                 a: float = RMIA_A, gamma: float = RMIA_GAMMA) -> np.ndarray:
    """Share of population rows z with LR(x)/LR(z) > γ, LR(x) = Pr(x|θ) / Pr(x): the target's
    true-label probabilities on the candidates `target_x` (n,) and population `target_z` (m,), the
    out references' mean on the candidates `out_x` (n,) (offline: Pr(x) by the a-approximation)
    and the references' mean on the population `reference_z` (m,)."""
    ratio_x = target_x / ((1 + a) / 2 * out_x + (1 - a) / 2)
    ratio_z = np.sort(target_z / reference_z)
    return np.searchsorted(gamma * ratio_z, ratio_x, side="left") / len(ratio_z)


class MembershipAttack(Attack):
    """A membership attack: a score per candidate from the deployed model and the references."""

    KIND = MEMBERSHIP

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        raise self.lacks("a deployed model and candidate samples, not a server view (the audit runs it on every "
                         "row's deployed model)")

    def score(self, target: MembershipTarget, references: ReferenceOutputs) -> np.ndarray:
        """(n,) membership scores of the candidates, higher for 'member'."""
        raise NotImplementedError


class LiraOnline(MembershipAttack):
    """LiRA with in and out references."""

    NAME = "lira_online"
    DESCRIPTION = "LiRA online: likelihood ratio of per-candidate Gaussian fits of φ under in and out references"

    def score(self, target: MembershipTarget, references: ReferenceOutputs) -> np.ndarray:
        return lira_online(logit_confidence(target.candidate_scores, target.candidate_labels),
                           logit_confidence(references.candidate_scores, target.candidate_labels), references.included)


class LiraOffline(MembershipAttack):
    """LiRA with out references only."""

    NAME = "lira_offline"
    DESCRIPTION = "LiRA offline: one-sided test of φ against per-candidate Gaussian fits under out references"

    def score(self, target: MembershipTarget, references: ReferenceOutputs) -> np.ndarray:
        return lira_offline(logit_confidence(target.candidate_scores, target.candidate_labels),
                            logit_confidence(references.candidate_scores, target.candidate_labels),
                            references.included)


class RmiaOffline(MembershipAttack):
    """RMIA with out references and public population rows."""

    NAME = "rmia_offline"
    DESCRIPTION = "RMIA offline: Pr(x|θ)/Pr(x) against public population rows, Pr(x) from out references"

    def score(self, target: MembershipTarget, references: ReferenceOutputs) -> np.ndarray:
        reference_x = true_label_probability(references.candidate_scores, target.candidate_labels)
        out = ~references.included
        # A candidate that every reference trained on falls back on all of them.
        out_mean = np.where(out.any(axis=0), (reference_x * out).sum(axis=0) / np.maximum(out.sum(axis=0), 1),
                            reference_x.mean(axis=0))
        # Pr(z) averages every reference, some of which trained on z (the attacker's rows fill their training
        # sets): that scales each LR(z), and the ranking of the candidates, monotone in LR(x), stays the same.
        return rmia_offline(true_label_probability(target.candidate_scores, target.candidate_labels), out_mean,
                            true_label_probability(target.population_scores, target.population_labels),
                            true_label_probability(references.population_scores, target.population_labels).mean(axis=0))
