"""Empirical ε lower bound of a DP claim: the distinguishing attack on its released field.

A mechanism's `DpClaim` names the field it protects. The same neighbouring pair is
released many times: for a claim on Δ, one input with label 0 and with label 1; for a
claim on the activations, two different inputs with the same label (replace-one); for a
claim on a generation run's r (or its activations), two different samples with answers
of the same length (replace-one: every position's r and state differ).
`attacks.distinguishing` learns a test on half of the releases and
`secure_assist.metrics.epsilon_lower_bound` turns its held-out TPR/FPR into a
Clopper-Pearson lower bound, which must not exceed the claimed ε.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from attacks.distinguishing import distinguish
from protocol.device.forward_device import DeviceRole, ForwardDevice, new_sample_ids
from protocol.errors import UserInputError
from protocol.modes.generation.device import GenerationDevice
from protocol.data.instructions import InstructionExample
from protocol.wire.messages import Message
from protocol.data.tasks import Example
from secure_assist.mechanisms import Mechanism
from secure_assist.mechanisms.base import DELTA_TARGET
from secure_assist.metrics import epsilon_lower_bound

# One neighbour's repeated release input: (upload, labels, label logits), as a mechanism's apply takes it.
Release = tuple[Message, np.ndarray, np.ndarray]


def neighbours(target: str, first: str, second: str) -> tuple[Example, Example]:
    """The classification pair that exercises a claim's target."""
    if target == DELTA_TARGET:
        return Example(text=first, label=0), Example(text=first, label=1)
    return Example(text=first, label=0), Example(text=second, label=0)


def classification_releases(device: DeviceRole, target: str, texts: tuple[str, str], releases: int
                            ) -> tuple[Release, Release]:
    """Each neighbour's upload, repeated `releases` times."""
    pair = []
    for example in neighbours(target, *texts):
        pivots = device.forward([example.text])
        batch = type(pivots)(activations=pivots.activations.repeat(releases, 1, 1),
                             label_logits=pivots.label_logits.repeat(releases, 1))
        upload = device.make_upload([example] * releases, batch, new_sample_ids(releases))
        pair.append((upload, np.full(releases, example.label), batch.label_logits.numpy()))
    return pair[0], pair[1]


def generation_releases(device: GenerationDevice, samples: list[InstructionExample], releases: int
                        ) -> tuple[Release, Release]:
    """Two samples whose answers have the same number of tokens, each upload repeated `releases`
    times (r is computed once per sample and tiled: the mechanism's randomness is per release)."""
    by_length: dict[int, InstructionExample] = {}
    for example in samples:
        length = len(device.token_ids(example)[1])
        if length in by_length:
            pair = []
            for chosen in (by_length[length], example):
                upload = device.make_upload([chosen], device.run_batch([chosen]), new_sample_ids(1))
                tiled = replace(upload, sample_ids=new_sample_ids(releases), counts=np.tile(upload.counts, releases),
                                activations=np.tile(upload.activations, (releases, 1, 1)),
                                residual=np.tile(upload.residual, (releases, 1)))
                pair.append((tiled, np.zeros(length * releases, np.int64), np.zeros((length * releases, 0))))
            return pair[0], pair[1]
        by_length[length] = example
    raise UserInputError("the DP check needs two uploaded samples whose answers have the same number of tokens")


def release_pair(device: ForwardDevice, target: str, samples: list[Any], releases: int) -> tuple[Release, Release]:
    """The neighbouring pair of a run's task, from its uploaded samples."""
    if isinstance(device, GenerationDevice):
        return generation_releases(device, samples, releases)
    return classification_releases(device, target, (samples[0].text, samples[1].text), releases)


def empirical_epsilon(mechanism: type[Mechanism], parameters: Any, pair: tuple[Release, Release],
                      seed: int = 0) -> dict[str, Any] | None:
    """Distinguish the releases of one neighbour from those of the other (None: no claim)."""
    outputs, claim = [], None
    target = mechanism.dp_target
    if target is None:
        return None
    for index, (upload, labels, logits) in enumerate(pair):
        instance = mechanism(parameters, np.random.default_rng([seed, index]))
        released = instance.apply(upload, labels, logits)
        count = len(upload.sample_ids)
        outputs.append(np.asarray(getattr(released, target)).reshape(count, -1))
        claim = instance.claim()
    outcome = distinguish(outputs[0], outputs[1], seed)
    bound = epsilon_lower_bound(outcome.true_positives, outcome.positives, outcome.false_positives,
                                outcome.negatives, delta=claim.delta)
    return {"mechanism": mechanism.name, "target": target, "releases_per_input": len(outputs[0]),
            "tpr": outcome.true_positives / outcome.positives, "fpr": outcome.false_positives / outcome.negatives,
            "empirical_epsilon_lower_bound": bound, "claimed_epsilon": claim.epsilon,
            "consistent": bound <= claim.epsilon}
