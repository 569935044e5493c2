"""Label leakage from split-learning gradients (Li et al., ICLR 2022).

The device returns d loss / d (server output) for every sample. With cross-entropy
over label words the gradient at the pivot is J^T (p - onehot(y)): its direction
flips with the label and its norm grows with the error, which is larger on the
minority class. Scores are continuous; the auditor reports max(AUC, 1 - AUC).
"""

from __future__ import annotations

import numpy as np

from attacks.base import SCORES, Attack, AttackResult, PublicKnowledge
from attacks.view_data import gradient_data
from protocol.server.transcript import GRADIENTS, ServerView


class GradientNorm(Attack):
    """Score = ‖g‖₂ of each sample's gradient."""

    NAME = "gradient_norm"
    NEEDS = frozenset({GRADIENTS})
    KIND = SCORES
    DESCRIPTION = "split learning: norm of the gradient the device returns"

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = gradient_data(view, self)
        return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=data.sample_ids,
                            scores=np.linalg.norm(data.gradients, axis=1))


class GradientCosine(Attack):
    """Score = cosine of each gradient with a reference gradient: the first sample's
    (any fixed sample works; its unknown label only flips the sign of every score)."""

    NAME = "gradient_cosine"
    NEEDS = frozenset({GRADIENTS})
    KIND = SCORES
    DESCRIPTION = "split learning: cosine of each gradient with a reference gradient"

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = gradient_data(view, self)
        unit = data.gradients / np.linalg.norm(data.gradients, axis=1, keepdims=True).clip(1e-12)
        return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=data.sample_ids, scores=unit @ unit[0])
