"""Empirical ε lower bound of a DP variant: the distinguishing attack on one sample's Δ.

The same input is released many times with label 0 and with label 1 (neighbouring
datasets under replace-one); `attacks.distinguishing` learns a test on half of the
releases and `secure_assist.metrics.epsilon_lower_bound` turns its held-out TPR/FPR
into a Clopper-Pearson lower bound, which must not exceed the claimed ε.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attacks.distinguishing import distinguish
from protocol.device import DeviceRole, new_sample_ids
from protocol.tasks import Example
from secure_assist.mechanisms import MECHANISMS, MechanismSettings
from secure_assist.metrics import epsilon_lower_bound


def empirical_epsilon(name: str, settings: MechanismSettings, device: DeviceRole, example: Example,
                      releases: int, seed: int = 0) -> dict[str, Any]:
    """Distinguish releases of `example` with label 0 from those with label 1."""
    pivots = device.forward([example.text])
    outputs, described = [], {}
    for label in (0, 1):
        mechanism = MECHANISMS[name](settings, np.random.default_rng([seed, label]))
        batch = type(pivots)(activations=pivots.activations.repeat(releases, 1, 1),
                             label_logits=pivots.label_logits.repeat(releases, 1))
        chunk = [Example(text=example.text, label=label)] * releases
        upload = device.make_upload(chunk, batch, new_sample_ids(releases))
        outputs.append(mechanism.apply(upload, np.full(releases, label), batch.label_logits.numpy()).delta)
        described = mechanism.describe()
    claim = described.get("epsilon")
    outcome = distinguish(outputs[0], outputs[1], seed)
    bound = epsilon_lower_bound(outcome.true_positives, outcome.positives, outcome.false_positives,
                                outcome.negatives, delta=float(described.get("delta", 0.0)))
    return {"releases_per_input": releases, "tpr": outcome.true_positives / outcome.positives,
            "fpr": outcome.false_positives / outcome.negatives, "empirical_epsilon_lower_bound": bound,
            "claimed_epsilon": claim, "consistent": claim is None or bound <= claim}
