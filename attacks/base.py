"""What every attack is: a server-side adversary that reads only the server's view.

An attack receives a `protocol.server.transcript.ServerView` and the public knowledge it
declares (`PublicKnowledge`), and returns an `AttackResult` keyed by sample id. It never
sees ground truth: the auditor (`secure_assist.audit.auditor`) holds that and scores results.
An attack declares the view fields it needs (`NEEDS`, names from
`protocol.server.transcript.VIEW_FIELDS`); one that finds a needed field absent raises
`MissingViewField` naming it. The auditor fails closed: when the view's mode declares
that field, its absence is an error, not "not applicable". Preconditions outside the
view (a layer that was not uploaded, public data the attacker lacks) raise `NotApplicable`.

The one list of attacks is `attacks.registry.ATTACKS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from protocol.errors import SecureAssistError, UserInputError
from protocol.data.tasks import Example, TaskSpec
from protocol.server.transcript import ServerView

# What a result holds, by attack family (ALIGNMENT: an estimate of the device's secret rotation).
LABELS, SCORES, RECONSTRUCTION, EXTRACTION, ALIGNMENT = "labels", "scores", "reconstruction", "extraction", "alignment"
# Generation views: the predicted answer token at every loss position of each sample.
ANSWER_TOKENS = "answer_tokens"
# A deployed model and candidate samples: a membership score per candidate (`attacks.membership`).
MEMBERSHIP = "membership"


class NotApplicable(SecureAssistError):
    """The attack cannot run on this view and public knowledge (e.g. a layer not uploaded)."""


class MissingViewField(NotApplicable):
    """The server's view lacks a field this attack needs (e.g. gradients in PAE)."""

    def __init__(self, attack: str, field_name: str) -> None:
        super().__init__(f"attack {attack!r} needs {field_name!r}, which this server view does not hold")
        self.field_name = field_name


@dataclass(frozen=True)
class PublicFeatures:
    """Public-backbone outputs for public texts, computed by the attacker itself."""

    activations: np.ndarray  # (n, len(layers), d) pivot states
    label_logits: np.ndarray  # (n, C) backbone logits of the label words


# texts, layers -> what the public backbone yields at the pivot for them.
FeatureFunction = Callable[[list[str], tuple[int, ...]], PublicFeatures]
# public instruction examples, layer -> (that layer's states at their answer positions (N, d),
# the input token id at each of those positions (N,)), from the public backbone.
AnswerStateFunction = Callable[[list[Any], int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class PublicKnowledge:
    """Everything public the server may use: the backbone, the task, public data.

    `features` runs the public backbone on public texts (the attacker's own compute; the
    auditor supplies a cached implementation so repeated audits do not pay for it).
    """

    backbone_name: str
    task: TaskSpec
    unlabeled_texts: tuple[str, ...] = ()
    labeled: tuple[Example, ...] = ()
    candidate_texts: tuple[str, ...] = ()  # a pool the attacker matches uploads against
    features: FeatureFunction | None = None
    seed: int = 0
    # Generation tasks: public instruction examples (with answers) and the public backbone's
    # states at their answer positions (the auditor supplies it, as it does `features`).
    public_examples: tuple[Any, ...] = ()
    answer_states: AnswerStateFunction | None = None
    # The device's mechanisms, which the server is assumed to know (not their secrets); None: unknown.
    mechanisms: tuple[str, ...] | None = None
    # (sample id, text) of uploads whose text the server knows: texts it made the device process
    # (injected into its data) and recognised on arrival. The known-pair alignment attacks read them.
    known_samples: tuple[tuple[str, str], ...] = ()

    def public_features(self, attack: str, texts: list[str], layers: tuple[int, ...]) -> PublicFeatures:
        """Public-backbone pivot features for `texts`; an error when none is declared."""
        if self.features is None:
            raise UserInputError(f"attack {attack!r} needs a public feature function (public backbone)")
        return self.features(texts, layers)


@dataclass
class AttackResult:
    """What an attack returns, keyed by hex sample id (never scored by the attack)."""

    attack: str
    kind: str
    sample_ids: list[str]
    predictions: np.ndarray | None = None  # (n,) class indices, for LABELS
    # SCORES: (n,) continuous score for class 1; LABELS, optionally: (n, C) per-class scores (AUC).
    scores: np.ndarray | None = None
    texts: list[str] | None = None  # reconstructed texts, for RECONSTRUCTION
    token_ids: list[list[int]] | None = None  # per-position recovered token ids (prompt or answer tokens)
    model: object | None = None  # the server's assembled model, for EXTRACTION
    rotation: np.ndarray | None = None  # (L, d, d) estimate R̂ of the secret rotations, for ALIGNMENT
    details: dict[str, object] = field(default_factory=dict)


class Attack:
    """Base class: subclasses set NAME, KIND, DESCRIPTION and implement `run`."""

    NAME: ClassVar[str] = ""
    KIND: ClassVar[str] = LABELS
    DESCRIPTION: ClassVar[str] = ""
    # True when the attack reads nothing derived from Δ (the activations-only baseline rows).
    ACTIVATIONS_ONLY: ClassVar[bool] = False
    # View fields (protocol.server.transcript.VIEW_FIELDS) the attack reads, all of them; and, when
    # not empty, fields of which it reads whichever the view holds (at least one).
    NEEDS: ClassVar[frozenset[str]] = frozenset()
    NEEDS_ONE_OF: ClassVar[frozenset[str]] = frozenset()
    # True when the attack reads uploaded states in the public backbone's own coordinates (its
    # head, embeddings, public-text features) or applies φ to plain states: a secret rotation
    # defeats it as such, so the audit runs it again on states an alignment attack realigned.
    PUBLIC_COORDINATES: ClassVar[bool] = False

    @classmethod
    def applicable(cls, fields: frozenset[str]) -> bool:
        """Whether a view holding `fields` has what this attack reads."""
        return cls.NEEDS <= fields and (not cls.NEEDS_ONE_OF or bool(cls.NEEDS_ONE_OF & fields))

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        """Attack the view with the declared public knowledge."""
        raise NotImplementedError

    def missing(self, field_name: str) -> MissingViewField:
        """The typed error for a field this view lacks."""
        return MissingViewField(self.NAME, field_name)

    def lacks(self, what: str) -> NotApplicable:
        """The typed error for a precondition outside the view (public data, a layer)."""
        return NotApplicable(f"attack {self.NAME!r} needs {what}")


def sized_variants(base: type[Attack], name: str, sizes: tuple[int, ...], description: str,
                   doc: str) -> tuple[type[Attack], ...]:
    """One attack class per size k of what the attacker knows (class attribute K): NAME and texts
    are `name`, `description` and `doc` formatted with k (e.g. "known_pairs_k{k}")."""
    return tuple(type(f"{base.__name__}K{k}", (base,), {
        "NAME": name.format(k=k), "K": k, "DESCRIPTION": description.format(k=k), "__doc__": doc.format(k=k)})
        for k in sizes)


def hex_ids(sample_ids: np.ndarray) -> list[str]:
    """Hex form of (n, 16) uint8 sample ids."""
    return [bytes(row).hex() for row in np.asarray(sample_ids, dtype=np.uint8)]
