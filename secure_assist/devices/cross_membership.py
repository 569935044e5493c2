"""Membership inference across devices: a curious member of a pool attacks the others' samples.

Every device of a pool deploys the shared model (pooled PAE's φ, FedAvg's global model), so
each member holds a model trained on the other members' data. The attacker is one of them:
it holds the shared model, the public backbone, its own samples and the attacker's public
data, and asks of a record whether another device trained on it. It runs every registered
membership attack through the single-device audit's machinery (`secure_assist.audit.membership`:
LiRA online/offline and RMIA with reference side networks it trains itself on its public
rows, with the target's recipe), scored with AUC and TPR at 1% and 0.1% FPR with bootstrap CIs.

- Attacker *(choice)*: device `ATTACKER` (0) unless told otherwise: under an iid split the
  devices are exchangeable, and under label skew any index can be given.
- Candidates *(choice)*: members are up to `MEMBER_CANDIDATES` (1000) of the OTHER devices'
  trained samples (seed-fixed; the attacker's own share and every device's held-out
  validation rows are left out: the attacker knows its own, and nobody trained on the
  validation rows); non-members are `NON_MEMBERS` (1000) rows of the same pool that no
  device drew for training or evaluation, disjoint from the attacker's public rows: the
  single-device audit's candidates, so the two numbers compare.
- The attacker's own samples *(choice)*: not used for references or as RMIA's population.
  The shared model trained on them, so as population rows they would be members and bias
  RMIA's comparison; the public rows serve both, as in the single-device audit. They do
  count in the target's training size the references mimic.
- Honest baseline: the same attacks against the backbone alone (zero-shot), which trained on
  nobody: at chance up to sampling noise.

The shared model is a model file as the attacker received it. A device's deployed file is
its safeguard's shrunk (or dropped) φ; a curious device keeps φ whole: its run saves the copy it
received (`keep_received_model`, as the many-device audit's attacker does), or skips its own
safeguard (`safeguard_fraction` 0: its validation rows go to training).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, MutableMapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from attacks.registry import ATTACKS
from protocol.errors import UserInputError
from protocol.model.model_io import load_finetuned
from secure_assist.audit.auditor import load_ground_truth
from secure_assist.audit.membership import (
    DeployedTarget, MembershipSetting, membership_attacks, membership_setting, score_membership,
)
from secure_assist.audit.public_knowledge import PublicData, public_data
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data
from secure_assist.devices.share import device_share

ATTACKER = 0
# Reference side networks the attacker trains (LiRA fits one variance for all candidates below 64).
REFERENCES = 16
SHARED_MODEL = "shared_model"
ZERO_SHOT = "zero_shot"


def device_trained_texts(workdirs: Sequence[Path | str]) -> list[frozenset[str]]:
    """What each device's run trained on (its uploads, from its ground truth), in device order."""
    return [frozenset(t.text for t in load_ground_truth(Path(w)).values()) for w in workdirs]


def _best(report: dict[str, Any]) -> dict[str, Any] | None:
    """The best attack's headline numbers of a membership report."""
    best = next((a for a in report.get("attacks", []) if a["attack"] == report.get("best_attack")), None)
    return None if best is None else {key: best[key] for key in (
        "attack", "auc", "auc_ci95", "tpr_at_0.01_fpr", "tpr_at_0.01_fpr_ci95", "tpr_at_0.001_fpr",
        "tpr_at_0.001_fpr_ci95")}


def setting_key(config: FinetuneConfig, targets: Sequence[Any], public: PublicData, layers: tuple[int, ...],
                references: int, trained_size: int) -> str:
    """What the attacker's membership setting depends on, as a digest: the backbone, task, seed and side-network
    recipe of the run, the other devices' samples, the public rows, the shared model's layers and the number and
    size of the references."""
    parts = [config.model, config.task, config.seed, config.epochs, config.device_batch_size,
             repr(config.server_training()), sorted(e.text for e in targets), public.source,
             [e.text for e in public.examples], list(layers), references, trained_size]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def cross_device_membership(config: FinetuneConfig, model_file: Path | str, trained: Sequence[Collection[str]],
                            attacker: int = ATTACKER, references: int = REFERENCES,
                            attacks: Sequence[str] | None = None, public: PublicData | None = None,
                            progress: bool = True,
                            settings: MutableMapping[str, MembershipSetting] | None = None) -> dict[str, Any]:
    """Device `attacker`'s membership attacks on the other devices' samples through the shared
    model in `model_file`, and the same attacks on the backbone alone.

    `config`: any device's config of the run (model, task, data, devices, partition, seed and
    the side network's recipe are the run's); `trained[i]`: the texts device i's run trained on
    (`device_trained_texts` of the devices' work directories); `attacks`: membership attack
    names (None: every registered one); `public`: the attacker's public rows (None: the rows of
    the task's pool the run does not use; a smaller run on a subset of a larger one's samples
    may share the larger one's, and with them its backbone passes); `settings`: the attacker's settings
    (candidates, population, trained references) already built, by `setting_key`, reused when this run's key
    is among them and added otherwise (an audit's rows over the same devices share them: the references
    depend on the recipe and the samples, not on the row). Returns the shared model's and the zero-shot report
    (`secure_assist.audit.membership.score_membership`), each with its best attack's numbers."""
    if len(trained) != config.devices:
        raise UserInputError(f"cross-device membership needs the trained samples of each of the {config.devices} "
                             f"devices, got {len(trained)}")
    if not 0 <= attacker < config.devices:
        raise UserInputError(f"attacker device {attacker} is not one of the {config.devices} devices")
    names = membership_attacks(list(ATTACKS) if attacks is None else list(attacks))
    if not names:
        raise UserInputError("cross-device membership needs at least one attack of kind membership")
    whole = replace(config, devices=1, device_index=0, flip_labels=False)
    task, train, evaluate = resolve_data(whole)
    own = {e.text for e in device_share(replace(config, device_index=attacker, flip_labels=False), train)}
    others = frozenset().union(*(texts for i, texts in enumerate(trained) if i != attacker)) - own
    targets = [e for e in train if e.text in others]
    if not targets:
        raise UserInputError("the other devices trained on no sample the attacker does not hold itself")
    shared = load_finetuned(Path(model_file))
    if public is None:
        public = public_data(task, None, config.train_file, train + evaluate, config.seed, config.skip_invalid_rows)
    if {e.text for e in public.examples} & {e.text for e in train}:
        raise UserInputError("the attacker's public rows include training samples of the run")
    size = len(frozenset().union(*trained))
    key = setting_key(config, targets, public, shared.layers, references, size)
    settings = {} if settings is None else settings
    if key not in settings:
        settings[key] = membership_setting(config, task, targets, public, shared.layers, references, progress,
                                           trained_size=size)
    setting = settings[key]
    reports = {name: score_membership(setting, DeployedTarget(name, side, others), names, config.seed)
               for name, side in ((SHARED_MODEL, shared.side_network), (ZERO_SHOT, None))}
    return {"attacker": attacker, "devices": config.devices, "partition": config.partition,
            "attacker_samples_left_out": len(own),
            **{name: {**report, "best": _best(report)} for name, report in reports.items()}}
