"""The one list of attacks: every attack class by its NAME (CLI choices, errors and the
audit's default set come from here)."""

from __future__ import annotations

from attacks.alignment import KNOWN_PAIRS, DistributionAlignment, MatchingAlignment, RotationInvariantMatching
from attacks.base import Attack
from attacks.extraction import ServerModelCopy
from attacks.generation import AnswerFromResidual, AnswerInversion, GenerationModelExtraction
from attacks.gradients import GradientCosine, GradientNorm
from attacks.labels import (
    MODEL_COMPLETIONS, ClusteringActivations, ClusteringDelta, DeltaArgmax, PublicHeadCombined, PublicHeadZeroShot,
    SideModelLabelling,
)
from attacks.membership import LiraOffline, LiraOnline, RmiaOffline
from attacks.reconstruction import (
    CandidateMatching, FullActivationInversion, LearnedInversion, PivotLogitLens, PivotNearestEmbedding,
)
from protocol.errors import UserInputError

# In the order the listing shows them.
_ATTACK_CLASSES: tuple[type[Attack], ...] = (
    # reconstruction of the prompt text
    PivotNearestEmbedding, PivotLogitLens, LearnedInversion, CandidateMatching, FullActivationInversion,
    # alignment of a secret rotation
    RotationInvariantMatching, DistributionAlignment, *KNOWN_PAIRS, MatchingAlignment,
    # labels
    DeltaArgmax, PublicHeadCombined, PublicHeadZeroShot, ClusteringDelta, ClusteringActivations, SideModelLabelling,
    *MODEL_COMPLETIONS,
    # the side model, answer tokens, gradients
    ServerModelCopy, AnswerFromResidual, AnswerInversion, GenerationModelExtraction, GradientNorm, GradientCosine,
    # membership in the deployed model's training set (they read a deployed model, not the server's view)
    LiraOnline, LiraOffline, RmiaOffline,
)
ATTACKS: dict[str, type[Attack]] = {cls.NAME: cls for cls in _ATTACK_CLASSES}
if len(ATTACKS) != len(_ATTACK_CLASSES) or "" in ATTACKS:
    raise RuntimeError("an attack name is empty or used twice")


def all_attacks() -> dict[str, type[Attack]]:
    """Every registered attack class by name."""
    return ATTACKS


def get_attack(name: str) -> Attack:
    """A fresh instance of the named attack; unknown names list the known ones."""
    if name not in ATTACKS:
        raise UserInputError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name]()
