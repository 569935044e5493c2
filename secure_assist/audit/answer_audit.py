"""The auditor's side of generation views: the public backbone's answer states, and scores against the answers.

Ground truth stays here: attacks return answer token ids per loss position and the
auditor compares them with the device's answers (tokenized as the device did), with
95% bootstrap intervals over samples and a frequency baseline (always guessing the most
frequent answer token). Model extraction is scored as greedy next-token agreement with
the deployed model on held-out answers (teacher forced).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from attacks.base import AttackResult
from attacks.public_model import public_backbone
from attacks.reconstruction import words
from protocol.modes.generation.device import GenerationDevice
from protocol.data.instructions import InstructionExample, InstructionTask
from protocol.model.model_io import FineTunedModel
from secure_assist.metrics import bag_scores, bootstrap_interval


class AnswerStates:
    """The attacker's public-backbone passes over public instruction examples: one layer's
    states at the answer positions and the input token there (the last prompt token, then
    every answer token but the last). Public knowledge only, so an audit's variants share
    the passes (memoized per backbone, task, examples and layer)."""

    def __init__(self, backbone_name: str, task: InstructionTask) -> None:
        self._backbone_name, self._task = backbone_name, task

    def __call__(self, examples: list[InstructionExample], layer: int) -> tuple[np.ndarray, np.ndarray]:
        return _answer_states(self._backbone_name, self._task, tuple(examples), layer)


@lru_cache(maxsize=4)
def _answer_states(backbone_name: str, task: InstructionTask, examples: tuple[InstructionExample, ...],
                   layer: int) -> tuple[np.ndarray, np.ndarray]:
    device = GenerationDevice(public_backbone(backbone_name), task, layers=(layer,), progress=False)
    states, inputs = [], []
    for chunk, outputs in device.batches(list(examples), "public answer states"):
        states.append(outputs.activations[:, 0].numpy())
        for example in chunk:
            prompt, answer = device.token_ids(example)
            inputs += [prompt[-1]] + answer[:-1]
    return np.concatenate(states), np.array(inputs, dtype=np.int64)


def score_answers(result: AttackResult, answers: list[str], backbone_name: str, task: InstructionTask,
                  seed: int = 0) -> dict[str, Any]:
    """Answer-token accuracy (per position, pooled), word-bag F1 and exact answer match, each with
    a 95% bootstrap interval over samples, and the frequency baseline; the true answers are
    tokenized as the device did (truncated, end of sequence when the answer fits)."""
    tokenizer = public_backbone(backbone_name).tokenizer
    actual = [task.answer_ids(tokenizer, InstructionExample(instruction="", input="", output=a)) for a in answers]
    return answer_token_scores(result.token_ids, actual, lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                               seed)


def answer_token_scores(predicted: list[list[int]], actual: list[list[int]], decode: Any,
                        seed: int = 0) -> dict[str, Any]:
    """Scores of per-position answer token predictions against the true answer tokens."""
    hits = np.array([sum(p == a for p, a in zip(guess, truth)) for guess, truth in zip(predicted, actual)], float)
    lengths = np.array([len(truth) for truth in actual], float)
    exact = np.array([list(guess) == list(truth) for guess, truth in zip(predicted, actual)], float)
    f1 = np.array([bag_scores(words(decode(guess)), words(decode(truth)))[2] for guess, truth in zip(predicted, actual)])
    counts = np.bincount(np.concatenate([np.asarray(t, dtype=np.int64) for t in actual]))
    return {"token_accuracy": float(hits.sum() / lengths.sum()),
            "token_accuracy_ci95": bootstrap_interval(lambda idx: float(hits[idx].sum() / lengths[idx].sum()),
                                                      len(hits), seed),
            "frequency_baseline": float(counts.max() / lengths.sum()),
            "token_f1": float(f1.mean()), "token_f1_ci95": bootstrap_interval(lambda idx: float(f1[idx].mean()),
                                                                               len(f1), seed),
            "exact_match": float(exact.mean()),
            "exact_match_ci95": bootstrap_interval(lambda idx: float(exact[idx].mean()), len(exact), seed),
            "n": len(actual), "tokens": int(lengths.sum())}


def score_generation_extraction(copy: torch.nn.Module, deployed: FineTunedModel, held_out: list[InstructionExample],
                                seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Greedy next-token agreement with the deployed model at every held-out answer position, of
    the server's copy (public backbone + its correction) and of the backbone alone."""
    device = GenerationDevice(public_backbone(deployed.backbone), deployed.task, layers=deployed.layers,
                              payload_dtype=deployed.payload_dtype, progress=progress)
    agree, backbone_agree, counts = [], [], []
    for _, outputs in device.batches(held_out, "extraction agreement"):
        with torch.inference_mode():
            logits = outputs.final_states @ device.weight.T
            choices = [(logits + side.eval()(outputs.activations) @ device.weight.T).argmax(dim=1)
                       for side in (deployed.side_network, copy)] + [logits.argmax(dim=1)]
        agree.append((choices[1] == choices[0]).numpy())
        backbone_agree.append((choices[2] == choices[0]).numpy())
        counts.append(outputs.counts.numpy())
    counts = np.concatenate(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    same = np.add.reduceat(np.concatenate(agree).astype(float), starts)
    base = np.add.reduceat(np.concatenate(backbone_agree).astype(float), starts)
    return {"agreement": float(same.sum() / counts.sum()),
            "agreement_ci95": bootstrap_interval(lambda idx: float(same[idx].sum() / counts[idx].sum()),
                                                 len(counts), seed),
            "backbone_only_agreement": float(base.sum() / counts.sum()), "n": len(held_out),
            "positions": int(counts.sum())}
