"""Empirical ε lower bound of a DP claim: the distinguishing attack on its released field.

A mechanism's `DpClaim` names the field it protects. The same neighbouring pair is
released many times: for a claim on Δ, one input with label 0 and with label 1; for a
claim on the activations, two different inputs with the same label (replace-one).
`attacks.distinguishing` learns a test on half of the releases and
`secure_assist.metrics.epsilon_lower_bound` turns its held-out TPR/FPR into a
Clopper-Pearson lower bound, which must not exceed the claimed ε.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attacks.distinguishing import distinguish
from protocol.device import DeviceRole, new_sample_ids
from protocol.tasks import Example
from secure_assist.mechanisms import Mechanism
from secure_assist.mechanisms.base import DELTA_TARGET
from secure_assist.metrics import epsilon_lower_bound


def neighbours(target: str, first: str, second: str) -> tuple[Example, Example]:
    """The neighbouring pair that exercises a claim's target."""
    if target == DELTA_TARGET:
        return Example(text=first, label=0), Example(text=first, label=1)
    return Example(text=first, label=0), Example(text=second, label=0)


def empirical_epsilon(mechanism: type[Mechanism], parameters: Any, device: DeviceRole, texts: tuple[str, str],
                      releases: int, seed: int = 0) -> dict[str, Any] | None:
    """Distinguish `releases` releases of one neighbour from those of the other (None: no claim)."""
    outputs, claim = [], None
    target = mechanism.dp_target
    if target is None:
        return None
    for index, example in enumerate(neighbours(target, *texts)):
        instance = mechanism(parameters, np.random.default_rng([seed, index]))
        pivots = device.forward([example.text])
        batch = type(pivots)(activations=pivots.activations.repeat(releases, 1, 1),
                             label_logits=pivots.label_logits.repeat(releases, 1))
        upload = device.make_upload([example] * releases, batch, new_sample_ids(releases))
        released = instance.apply(upload, np.full(releases, example.label), batch.label_logits.numpy())
        outputs.append(getattr(released, target))
        claim = instance.claim()
    outcome = distinguish(outputs[0], outputs[1], seed)
    bound = epsilon_lower_bound(outcome.true_positives, outcome.positives, outcome.false_positives,
                                outcome.negatives, delta=claim.delta)
    return {"mechanism": mechanism.name, "target": target, "releases_per_input": releases,
            "tpr": outcome.true_positives / outcome.positives, "fpr": outcome.false_positives / outcome.negatives,
            "empirical_epsilon_lower_bound": bound, "claimed_epsilon": claim.epsilon,
            "consistent": bound <= claim.epsilon}
