"""Model extraction: the server assembles its copy of the fine-tuned model.

The deployed model is the public backbone plus φ; the server trained φ and keeps it,
so its copy is (backbone name, φ). The auditor measures agreement with the device's
deployed model on held-out inputs.
"""

from __future__ import annotations

from attacks.base import EXTRACTION, Attack, AttackResult, PublicKnowledge, register
from attacks.labels import load_side_network
from protocol.transcript import ServerView


@register
class ServerModelCopy(Attack):
    """Public backbone + the side network the server holds."""

    NAME = "model_extraction"
    KIND = EXTRACTION
    DESCRIPTION = "public backbone + server-held side network as a copy of the deployed model"

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        network = load_side_network(self, view)
        return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=[], model=network,
                            details={"backbone": public.backbone_name})
