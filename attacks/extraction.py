"""Model extraction: the server assembles its copy of the fine-tuned model.

The deployed model is the public backbone plus a side output. In plain and DP runs that
is φ, which the server trained and keeps, so its copy is (backbone, φ). In the CKKS mode
the deployed head is F(A)·W: the server computed the feature map F but holds W only
encrypted (`HeFitReply`), so the best copy it can assemble is the backbone alone (a zero
side output). Under `activation_rotation` φ reads states in the device's secret coordinates:
on the view as received the copy is φ on plain states; on a view an alignment attack
realigned it is φ∘R̂ (`attacks.realigned_view`). The auditor measures agreement with the
device's deployed model on held-out inputs, next to the backbone-only agreement.
"""

from __future__ import annotations

import torch

from attacks.base import EXTRACTION, Attack, AttackResult, PublicKnowledge
from attacks.labels import load_side_network
from attacks.realigned_view import estimated_rotation
from protocol.model.input_maps import RotatedInput
from protocol.modes.ckks_ridge.messages import HeFitReply
from protocol.server.transcript import ENCRYPTED_HEAD, OUTBOUND, SIDE_NETWORK, ServerView


class BackboneOnly(torch.nn.Module):
    """A zero side output: the deployed model's prediction becomes the backbone's own."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        """(n, C) zeros."""
        return torch.zeros(len(activations), self.n_classes)


def encrypted_head_sent(view: ServerView) -> bool:
    """Whether the server returned an encrypted head (the CKKS mode) rather than keeping φ."""
    return any(r.direction == OUTBOUND and isinstance(r.message, HeFitReply) for r in view.messages())


class ServerModelCopy(Attack):
    """Public backbone + whatever side output the server holds in the clear."""

    NAME = "model_extraction"
    NEEDS_ONE_OF = frozenset({SIDE_NETWORK, ENCRYPTED_HEAD})
    PUBLIC_COORDINATES = True
    KIND = EXTRACTION
    DESCRIPTION = "public backbone + server-held side output (φ; nothing when the head is CKKS-encrypted)"

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        details: dict[str, object] = {"backbone": public.backbone_name}
        if not view.side_network_path.is_file() and encrypted_head_sent(view):
            details["copy"] = "backbone alone: the head W left the server only as enc(W)"
            return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=[],
                                model=BackboneOnly(public.task.n_classes), details=details)
        network = load_side_network(self, view)
        rotation = estimated_rotation(view)
        if rotation is not None:
            return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=[], model=RotatedInput(network, rotation),
                                details={**details, "copy": "backbone + φ reading states through the estimated R̂"})
        return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=[], model=network,
                            details={**details, "copy": "backbone + φ"})
