"""Generation: instruction data with free-text answers, scored by answer NLL, token accuracy
and ROUGE-L of greedy generations.

Utility on the evaluation split (summary keys): `zero_shot_answer_nll` / `eval_answer_nll`,
the mean negative log-likelihood per answer token under teacher forcing, of the backbone
alone and with the deployed side output; `zero_shot_token_accuracy` / `eval_token_accuracy`,
next-token top-1 accuracy on answer tokens; `zero_shot_rouge_l` / `rouge_l`, ROUGE-L of
greedy generations (at most max_answer_tokens) against the reference answer as trained
(truncated to the same tokens), on the first `rouge_samples` evaluation prompts; and
`answer_nll_reduction` with a 95% paired bootstrap interval over evaluation samples. The
per-sample sums (columns: backbone, fine-tuned) are kept in `<workdir>/device/eval_scores.npz`
for paired comparisons between runs. With `canaries`, the training split also holds the planted
secrets (`secure_assist.canaries`) and the metrics' `canaries` their exposure under the backbone and
the deployed model.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocol.model.backbone import load_backbone
from protocol.errors import UserInputError
from protocol.files import write_atomic
from protocol.modes.generation.answer_cache import AnswerCachingDevice
from protocol.modes.generation.device import GenerationDevice
from protocol.data.instructions import InstructionExample, InstructionTask, load_instructions
from protocol.model.side_output import SideOutput
from secure_assist.canaries import MODELS, Canaries, canary_example, canary_settings, exposure_report, plant
from secure_assist.config import FinetuneConfig
from secure_assist.data import subsets
from secure_assist.devices.share import device_share
from secure_assist.task_kinds.base import TaskKind
from secure_assist.mechanisms import MechanismChain
from secure_assist.metrics import bootstrap_interval, rouge_l
from secure_assist.training.safeguard import SCALE_GRID, choose_scale, drop_unvalidated, shrink_network
from secure_assist.training.workdir import DEVICE_DIR, EVAL_SCORES_FILE, GROUND_TRUTH_FILE


def per_sample_sums(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Row values (N, ...) summed per sample (n, ...), samples owning `counts` consecutive rows."""
    return np.add.reduceat(values, np.concatenate([[0], np.cumsum(counts)[:-1]]), axis=0)


def answer_metrics(log_probs: np.ndarray, correct: np.ndarray, counts: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Token-weighted NLL and top-1 accuracy of columns 0 (backbone) and 1 (fine-tuned), and
    the NLL reduction with its paired bootstrap interval over samples."""
    nll = per_sample_sums(-log_probs.astype(np.float64), counts)
    hits = per_sample_sums(correct.astype(np.float64), counts)
    tokens = counts.astype(np.float64)

    def reduction(idx: np.ndarray) -> float:
        return float((nll[idx, 0] - nll[idx, 1]).sum() / tokens[idx].sum())

    return {"zero_shot_answer_nll": float(nll[:, 0].sum() / tokens.sum()),
            "eval_answer_nll": float(nll[:, 1].sum() / tokens.sum()),
            "answer_nll_reduction": reduction(np.arange(len(counts))),
            "answer_nll_reduction_ci95": bootstrap_interval(reduction, len(counts), seed),
            "zero_shot_token_accuracy": float(hits[:, 0].sum() / tokens.sum()),
            "eval_token_accuracy": float(hits[:, 1].sum() / tokens.sum()),
            "eval_answer_tokens": int(tokens.sum())}


def reference_text(device: GenerationDevice, example: InstructionExample) -> str:
    """The answer as trained: its first max_answer_tokens tokens, decoded."""
    tokenizer = device.backbone.tokenizer
    ids = [t for t in device.task.answer_ids(tokenizer, example) if t != tokenizer.eos_token_id]
    return tokenizer.decode(ids, skip_special_tokens=True)


def run_canaries(config: FinetuneConfig) -> Canaries | None:
    """The run's canaries (None without `canaries`): a pure function of the config, so every row of an
    audit plants and scores the same secrets."""
    return Canaries.draw(config.canaries, config.canary_repetitions, config.seed) if config.canaries else None


def canary_exposure(device: GenerationDevice, side: SideOutput | None, canaries: Canaries,
                    trained_answers: list[str]) -> dict[str, Any]:
    """Exposure of the planted and null secrets under the deployed model (the backbone plus `side`, or
    the device's backbone as it is, e.g. with LoRA adapters, when `side` is None) and, with a side
    output, under the backbone alone; `trained_answers` (the answers the model was trained on) gives
    each planted secret's copies trained."""
    secrets = canaries.planted + canaries.null + canaries.candidates
    columns = MODELS if side is not None else MODELS[1:]
    with torch.inference_mode():
        log_probs, _, counts = device.token_scores([canary_example(s) for s in secrets], side,
                                                   scales=(0.0, 1.0)[:len(columns)])
    answers = per_sample_sums(log_probs.astype(np.float64), counts)
    planted, null = len(canaries.planted), len(canaries.null)
    trained = [trained_answers.count(canary_example(s).output) for s in canaries.planted]
    return {**canary_settings(canaries), **{
        name: exposure_report(canaries.planted, answers[:planted, column], canaries.null,
                              answers[planted:planted + null, column], answers[planted + null:, column],
                              [0] * planted if name == "backbone" else trained)  # the backbone trained on none
        for column, name in enumerate(columns)}}


def generations(device: GenerationDevice, examples: list[InstructionExample], side: SideOutput | None) -> list[str]:
    """Greedy answers, decoded."""
    return [device.backbone.tokenizer.decode(ids, skip_special_tokens=True) for ids in device.generate(examples, side)]


class GenerationKind(TaskKind):
    """Instruction rows; the side output corrects every next-token prediction."""

    name = "generation"

    def data(self, config: FinetuneConfig) -> tuple[InstructionTask, list[InstructionExample],
                                                    list[InstructionExample]]:
        task = InstructionTask(template=config.template, instruction_column=config.instruction_column,
                               input_column=config.input_column, output_column=config.output_column,
                               max_answer_tokens=config.max_answer_tokens)
        if not config.train_file:
            raise UserInputError("--task generation needs --train-file (JSONL, CSV or TSV with the columns "
                                 f"{task.instruction_column!r}, {task.input_column!r}, {task.output_column!r})")
        train_pool = load_instructions(config.train_file, task, config.skip_invalid_rows)
        eval_pool = load_instructions(config.eval_file, task, config.skip_invalid_rows) if config.eval_file else None
        train, evaluate = subsets(config, train_pool, eval_pool)
        train = device_share(config, train)
        canaries = run_canaries(config)
        return task, (train if canaries is None else plant(train, canaries, config.seed)), evaluate

    def make_device(self, config: FinetuneConfig, task: InstructionTask, mechanisms: MechanismChain | None,
                    progress: bool, datasets: tuple[list[InstructionExample], ...] = ()) -> GenerationDevice:
        """The device role; with `rounds` > 1 it keeps its passes in memory (`AnswerCachingDevice`): later
        rounds reread them instead of running the backbone again."""
        if config.reuse_forwards:
            raise UserInputError("reuse_forwards keeps classification forward passes only; generation runs "
                                 "recompute them")
        device = AnswerCachingDevice if config.rounds > 1 else GenerationDevice
        return device(load_backbone(config.model), task, layers=config.layers, payload_dtype=config.payload_dtype,
                      batch_size=config.device_batch_size, progress=progress, transform=mechanisms)

    def validation_fraction(self, config: FinetuneConfig) -> float:
        """0.1 for every run: the correction's scale is chosen on the device's validation split
        (the MSE fit through the head is a short step: see `CORRECTION_SCALES`)."""
        return 0.1

    def check(self, device: GenerationDevice, examples: list[InstructionExample]) -> None:
        for example in examples:
            device.token_ids(example)  # an answer that tokenizes to nothing names its file and line

    def safeguard(self, device: GenerationDevice, side: SideOutput, validation: list[InstructionExample] | None,
                  seed: int = 0, deployed: SideOutput | None = None) -> dict[str, Any] | None:
        """Scale the correction to the factor with the lowest validation answer NLL, kept only
        when its gain over the backbone (`deployed`: over the backbone corrected by that, the sum a
        boosting round adds to) is significant (one-sided sign test over samples)."""
        if validation is None:
            return None
        if not validation:
            return drop_unvalidated(side)
        log_probs, _, counts = device.token_scores(validation, side, scales=SCALE_GRID, deployed=deployed)
        decision = choose_scale(per_sample_sums(-log_probs.astype(np.float64), counts), counts)
        shrink_network(side, decision.factor)
        return decision.to_json()

    def evaluate(self, device: GenerationDevice, config: FinetuneConfig, side: SideOutput,
                 evaluate: list[InstructionExample]) -> dict[str, Any]:
        log_probs, correct, counts = device.token_scores(evaluate, side)
        metrics = answer_metrics(log_probs, correct, counts, config.seed)
        # Per-sample sums stay on the device side for paired comparisons between runs.
        buffer = io.BytesIO()
        np.savez(buffer, nll=per_sample_sums(-log_probs.astype(np.float64), counts),
                 correct=per_sample_sums(correct.astype(np.float64), counts), counts=counts)
        write_atomic(Path(config.workdir) / DEVICE_DIR / EVAL_SCORES_FILE, buffer.getvalue())
        prompts = evaluate[:config.rouge_samples]
        references = [reference_text(device, e) for e in prompts]
        with torch.inference_mode():
            for key, output in (("zero_shot_rouge_l", None), ("rouge_l", side)):
                texts = generations(device, prompts, output)
                metrics[key] = float(np.mean([rouge_l(t, r) for t, r in zip(texts, references)]))
        canaries = run_canaries(config)
        if canaries is not None:
            # The side output was trained on the uploads, whose answers the device's ground truth records.
            truth = (Path(config.workdir) / DEVICE_DIR / GROUND_TRUTH_FILE).read_text(encoding="utf-8")
            metrics["canaries"] = canary_exposure(device, side, canaries,
                                                  [json.loads(line)["answer"] for line in truth.splitlines()])
        return {**metrics, "rouge_samples": len(prompts)}
