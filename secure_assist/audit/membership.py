"""Membership inference on every audit row's deployed model: who was in the training set?

The deployed model (backbone + the side output the device deploys; `zero_shot`: the backbone
alone) may be shared, and every device of a pool holds the pool's model, so the audit asks
what its outputs reveal about membership. The attacker holds the model, the candidates'
records and labeled public rows; it trains reference side networks itself
(`attacks.membership_references`, the target's recipe, the project's side trainer) once per
audit and runs every registered attack of kind `membership` on each row.

Candidates *(choice)*: members are a seed-fixed subsample of the audit's training set (a row
that held some back for its safeguard counts only those it trained on); non-members are rows
of the same public pool as the attacker's data (for the built-in task, unused rows of the
training split: the same distribution), never uploaded, disjoint from the attacker's own
rows. The attacker's population (reference training rows and RMIA's z) is its labeled and
unlabeled public rows, with their labels (LiRA's and RMIA's threat model), whose backbone
passes the label attacks already computed. The auditor scores each attack: AUC and TPR at
1% and 0.1% FPR with bootstrap CIs, and the ROC on log-spaced FPRs for the report's plot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.base import MEMBERSHIP, FeatureFunction, NotApplicable
from attacks.membership import MembershipTarget
from attacks.membership_references import (
    LabeledFeatures, ReferenceOutputs, TrainingRecipe, deployed_scores, train_references,
)
from attacks.registry import get_attack
from protocol.data.tasks import Example, TaskSpec
from protocol.model.model_io import load_finetuned
from secure_assist.audit.auditor import load_ground_truth
from secure_assist.audit.public_knowledge import PUBLIC_LABELED, PUBLIC_UNLABELED, PublicData, knowledge
from secure_assist.audit.sampling import sample_ids
from secure_assist.config import FinetuneConfig
from secure_assist.metrics import auc_with_interval, low_fpr_metrics, tpr_at_fpr
from secure_assist.training.workdir import MODEL_FILE

# Training samples drawn as member candidates: with as many non-members, each reference trains on about half
# of the candidates and fills the rest of its training set with population rows.
MEMBER_CANDIDATES = 1000
# A thousand non-members resolve TPR at 0.1% FPR (one false positive allowed).
NON_MEMBERS = 1000
# Population rows RMIA compares each candidate with, at least (its score's resolution is 1 / this): the
# attacker's labeled rows, a pool of their own in its feature cache (the unlabeled pool is forwarded in full
# only when the references need more rows).
RMIA_POPULATION = PUBLIC_LABELED
# The ROC's false-positive rates in the report (log-spaced, for log-log axes).
ROC_FPRS = tuple(float(f) for f in np.logspace(-3, 0, 31))


@dataclass(frozen=True)
class DeployedTarget:
    """One audit row as a membership target: its deployed side output (None: the backbone
    alone) and the texts it was trained on. Any deployed model is one: a pool's shared model
    would be its side output and the union of its members' training texts."""

    row: str
    side: torch.nn.Module | None
    trained_texts: frozenset[str]


@dataclass(frozen=True)
class MembershipSetting:
    """What every row's attacks share: candidates, population and the references trained once."""

    member_texts: list[str]
    candidates: LabeledFeatures  # members first, then non-members
    population: LabeledFeatures
    references: ReferenceOutputs


def _features(function: FeatureFunction, examples: list[Example], layers: tuple[int, ...]) -> LabeledFeatures:
    public = function([e.text for e in examples], layers)
    return LabeledFeatures(public.activations, public.label_logits, np.array([e.label for e in examples]))


def membership_setting(config: FinetuneConfig, task: TaskSpec, train: list[Example], public: PublicData,
                       layers: tuple[int, ...], references: int, progress: bool,
                       trained_size: int | None = None) -> MembershipSetting:
    """Draw the member candidates from `train`, compute their and the population's backbone
    passes (through the attacker's feature cache) and train `references` reference side
    networks of the target's training size (`trained_size`; None: `len(train)`; larger when
    the target also trained on rows that are no candidates, e.g. a curious pool member's own)."""
    size = len(train) if trained_size is None else trained_size
    chosen = sample_ids([e.text for e in train], MEMBER_CANDIDATES, config.seed)
    members = [e for e in train if e.text in chosen]
    attacker_rows = PUBLIC_LABELED + PUBLIC_UNLABELED
    non_members = public.examples[attacker_rows:attacker_rows + NON_MEMBERS]
    if not non_members:
        raise NotApplicable(f"membership needs public rows beyond the attacker's first {attacker_rows} for "
                            "non-member candidates")
    # The same knowledge the label attacks build, so its backbone passes come from the cache.
    known = knowledge(config.model, task, public, [], config.seed, progress, private_pool=[e.text for e in train])
    # References fill up to the target's size with population rows; RMIA compares with at least RMIA_POPULATION.
    needed = max(size - min((len(members) + len(non_members)) // 2, size), RMIA_POPULATION)
    population_rows = (list(known.labeled) + list(public.examples[PUBLIC_LABELED:attacker_rows]))[:needed]
    candidates = LabeledFeatures.concatenate([_features(known.features, members, layers),
                                              _features(known.features, non_members, layers)])
    population = _features(known.features, population_rows, layers)
    recipe = TrainingRecipe(config.server_training(), config.epochs, config.device_batch_size)
    outputs = train_references(candidates, population, recipe, references, size, config.seed, progress)
    return MembershipSetting([e.text for e in members], candidates, population, outputs)


def score_membership(setting: MembershipSetting, target: DeployedTarget, attacks: list[str],
                     seed: int = 0) -> dict[str, Any]:
    """Each membership attack on one row's deployed model, scored against who was a member."""
    member = np.array([t in target.trained_texts for t in setting.member_texts])
    n_members = len(setting.member_texts)
    # Member candidates this row did not train on (its safeguard's hold-out) are left out.
    keep = np.concatenate([np.flatnonzero(member), np.arange(n_members, len(setting.candidates))])
    truth = (keep < n_members).astype(int)
    candidates = setting.candidates.subset(keep)
    references = ReferenceOutputs(setting.references.candidate_scores[:, keep], setting.references.included[:, keep],
                                  setting.references.population_scores)
    deployed = MembershipTarget(deployed_scores(target.side, candidates), candidates.labels,
                                deployed_scores(target.side, setting.population), setting.population.labels)
    rows = []
    for name in attacks:
        attack = get_attack(name)
        scores = attack.score(deployed, references)
        auc = auc_with_interval(scores, truth, seed)
        rows.append({"attack": name, "description": attack.DESCRIPTION, "auc": auc["auc"], "auc_ci95": auc["ci95"],
                     **low_fpr_metrics(scores, truth, seed=seed),
                     "roc": {"fpr": list(ROC_FPRS), "tpr": [tpr_at_fpr(scores, truth, f) for f in ROC_FPRS]}})
    best = max(rows, key=lambda r: (r["tpr_at_0.01_fpr"], r["auc"]), default=None)
    return {"status": "ok", "references": len(references), "members": int(truth.sum()),
            "non_members": int(len(truth) - truth.sum()), "attacks": rows,
            "best_attack": None if best is None else best["attack"]}


def membership_attacks(names: list[str]) -> list[str]:
    """The configured attacks of kind membership."""
    return [n for n in names if get_attack(n).KIND == MEMBERSHIP]


def row_target(row: str, workdir: Path | str | None, trained_from: Path | str) -> DeployedTarget:
    """A row's deployed model (`workdir`'s model file; None: the backbone alone) and the texts the
    run in `trained_from` trained on (its uploads: what reached the trainer)."""
    side = None if workdir is None else load_finetuned(Path(workdir) / MODEL_FILE).side_network
    return DeployedTarget(row, side, frozenset(t.text for t in load_ground_truth(Path(trained_from)).values()))


def membership_reports(config: FinetuneConfig, task: TaskSpec, train: list[Example], public: PublicData,
                       rows: list[tuple[str, str | None]], local_workdir: str, references: int, attacks: list[str],
                       progress: bool) -> dict[str, dict[str, Any]]:
    """row -> its membership report, for `rows` (name, run work directory; None: the backbone
    alone, whose members are those of `local_workdir`, the device_local run)."""
    layers = load_finetuned(Path(local_workdir) / MODEL_FILE).layers
    try:
        setting = membership_setting(config, task, train, public, layers, references, progress)
    except NotApplicable as exc:
        return {name: {"status": "not_applicable", "reason": str(exc)} for name, _ in rows}
    return {name: score_membership(setting, row_target(name, workdir, workdir or local_workdir), attacks, config.seed)
            for name, workdir in rows}
