"""Empirical ε lower bound of a DP claim: the distinguishing attack on its released field.

A mechanism's `DpClaim` names the field it protects. One neighbouring pair is released
many times (releases are cheap: the same upload re-randomised, a chunk at a time so
that memory stays bounded). For a claim on Δ, the pair is the two (uploaded text,
label) samples whose plain Δ lie farthest apart: replace-one adjacency lets any sample
become any other, and the farthest pair is the one whose releases the claim must keep
hardest to tell apart. For a claim on the activations, two different inputs with the
same label; for a generation run's r (or its activations), two different samples with
answers of the same length (every position's r and state differ).
`attacks.distinguishing` scores every release with the likelihood-ratio test along the
neighbours' mean difference; `secure_assist.audit.dp_bounds` chooses its operating
point on half of the releases and turns the other half's TPR/FPR into a Clopper-Pearson
ε lower bound, which must not exceed the claimed ε, and a Gaussian-DP μ.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from attacks.distinguishing import MeanDifferenceTest
from protocol.data.instructions import InstructionExample
from protocol.data.tasks import Example
from protocol.device.forward_device import DeviceRole, ForwardDevice, new_sample_ids
from protocol.errors import UserInputError
from protocol.modes.generation.device import GenerationDevice
from protocol.wire.messages import Message
from secure_assist.audit.dp_bounds import held_out_bounds
from secure_assist.mechanisms import Mechanism
from secure_assist.mechanisms.base import ACTIVATIONS_TARGET, DELTA_TARGET, RESIDUAL_TARGET

# One neighbour's release input, a chunk of identical uploads: (upload, labels, label logits), as a
# mechanism's apply takes it.
Release = tuple[Message, np.ndarray, np.ndarray]
# Bytes of the uploads released per call of the mechanism: bounds a chunk's memory (a real model's
# activations are ~35 KB per upload) while keeping the per-call overhead negligible.
CHUNK_BYTES = 64 * 2**20
# Uploaded texts searched for the farthest Δ pair: one forward pass of a batch on the device.
PAIR_CANDIDATES = 32
# Releases per input unless configured. A release of Δ is C values, so many releases certify a large share
# of the claim in seconds; a release of the activations or of r draws thousands of noise values each.
DEFAULT_RELEASES = {DELTA_TARGET: 200_000, ACTIVATIONS_TARGET: 2_000, RESIDUAL_TARGET: 2_000}


def releases_for(mechanism: type[Mechanism], configured: int | None) -> int:
    """The DP check's releases per input for this mechanism's claim: `configured`, else its target's default."""
    return DEFAULT_RELEASES[mechanism.dp_target] if configured is None else configured


def release_chunk(releases: int, upload: Message) -> int:
    """Releases per mechanism call, given one release's upload: the first chunk (which fits the test's
    direction) lies in the fitting half."""
    if releases < 2:
        raise UserInputError(f"the DP check needs at least 2 releases per neighbouring input, got {releases}")
    upload_bytes = sum(array.nbytes for array in upload.parts()[0].values())
    return max(1, min(releases // 2, CHUNK_BYTES // upload_bytes))


def farthest_delta_pair(device: DeviceRole, examples: list[Example], same_text: bool) -> tuple[Example, Example]:
    """The two (text, label) samples, texts from `examples` and any labels, whose plain Δ differ most
    (`same_text`: only pairs that differ in the label, the neighbours of a label-DP claim)."""
    texts = [e.text for e in examples[:PAIR_CANDIDATES]]
    pivots = device.forward(texts)
    n_classes = pivots.label_logits.shape[1]
    candidates = [Example(text=text, label=label) for label in range(n_classes) for text in texts]
    deltas = np.concatenate([device.make_upload([Example(text=t, label=label) for t in texts], pivots,
                                                new_sample_ids(len(texts))).delta for label in range(n_classes)])
    distances = np.linalg.norm(deltas[:, None, :] - deltas[None, :, :], axis=-1)
    if same_text:
        text_index = np.arange(len(candidates)) % len(texts)
        distances[text_index[:, None] != text_index[None, :]] = -np.inf
    first, second = np.unravel_index(int(np.argmax(distances)), distances.shape)
    return candidates[first], candidates[second]


def classification_releases(device: DeviceRole, mechanism: type[Mechanism], examples: list[Example], releases: int
                            ) -> tuple[Release, Release]:
    """Each neighbour's upload, repeated a chunk's times (Δ claims: the farthest Δ pair; activation
    claims: the first two texts under label 0)."""
    if mechanism.dp_target == DELTA_TARGET:
        pair = farthest_delta_pair(device, examples, same_text=mechanism.label_dp)
    else:
        pair = (Example(text=examples[0].text, label=0), Example(text=examples[1].text, label=0))
    chunks = []
    for example in pair:
        pivots = device.forward([example.text])
        chunk = release_chunk(releases, device.make_upload([example], pivots, new_sample_ids(1)))
        batch = type(pivots)(activations=pivots.activations.repeat(chunk, 1, 1),
                             label_logits=pivots.label_logits.repeat(chunk, 1))
        upload = device.make_upload([example] * chunk, batch, new_sample_ids(chunk))
        chunks.append((upload, np.full(chunk, example.label), batch.label_logits.numpy()))
    return chunks[0], chunks[1]


def generation_releases(device: GenerationDevice, samples: list[InstructionExample], releases: int
                        ) -> tuple[Release, Release]:
    """Two samples whose answers have the same number of tokens, each upload repeated a chunk's
    times (r is computed once per sample and tiled: the mechanism's randomness is per release)."""
    by_length: dict[int, InstructionExample] = {}
    for example in samples:
        length = len(device.token_ids(example)[1])
        if length in by_length:
            pair = []
            for chosen in (by_length[length], example):
                upload = device.make_upload([chosen], device.run_batch([chosen]), new_sample_ids(1))
                chunk = release_chunk(releases, upload)
                tiled = replace(upload, sample_ids=new_sample_ids(chunk), counts=np.tile(upload.counts, chunk),
                                activations=np.tile(upload.activations, (chunk, 1, 1)),
                                residual=np.tile(upload.residual, (chunk, 1)))
                pair.append((tiled, np.zeros(length * chunk, np.int64), np.zeros((length * chunk, 0))))
            return pair[0], pair[1]
        by_length[length] = example
    raise UserInputError("the DP check needs two uploaded samples whose answers have the same number of tokens")


def release_pair(device: ForwardDevice, mechanism: type[Mechanism], samples: list[Any], releases: int
                 ) -> tuple[Release, Release]:
    """The neighbouring pair of a run's task for the mechanism's claim, from its uploaded samples, as
    chunks for `releases` releases."""
    if isinstance(device, GenerationDevice):
        return generation_releases(device, samples, releases)
    return classification_releases(device, mechanism, samples, releases)


def empirical_epsilon(mechanism: type[Mechanism], parameters: Any, pair: tuple[Release, Release], releases: int,
                      seed: int = 0) -> dict[str, Any] | None:
    """Release each neighbour `releases` times and bound the claim from the attack's test (None: no claim)."""
    target = mechanism.dp_target
    if target is None:
        return None
    instances = [mechanism(parameters, np.random.default_rng([seed, index])) for index in range(2)]

    def released(index: int) -> np.ndarray:
        # A run of R boosting rounds releases each sample's signal R times, with fresh noise each: the attacker
        # holds all of them, and for additive noise their mean is the statistic to test, so the check tests the R
        # releases the claim covers, not one of them.
        upload, labels, logits = pair[index]
        views = [np.asarray(getattr(instances[index].apply(upload, labels, logits), target))
                 for _ in range(instances[index].releases)]
        return np.mean(views, axis=0).reshape(len(upload.sample_ids), -1)

    first = [released(0), released(1)]
    test = MeanDifferenceTest(*first)
    scores = []
    for index in range(2):
        rounds = math.ceil(releases / len(first[index]))
        chunks = [test.scores(first[index])] + [test.scores(released(index)) for _ in range(rounds - 1)]
        scores.append(np.concatenate(chunks)[:releases])
    claim = instances[0].claim()
    bounds = held_out_bounds(scores[0], scores[1], claim.delta)
    return {"mechanism": mechanism.name, "target": target, "releases_per_input": releases,
            "rounds_per_release": instances[0].releases,
            "test": "likelihood ratio along the neighbours' mean difference", **bounds,
            "claimed_epsilon": claim.epsilon, "delta": claim.delta,
            "consistent": bounds["empirical_epsilon_lower_bound"] <= claim.epsilon}
