"""Utility and cost of each audit row on the same evaluation samples, and the reference rows.

Every row is scored per evaluation sample, so its utility gets a bootstrap CI and
differences between rows get paired CIs: "vs zero-shot" (is the side output worth
deploying?) and "vs device_local" (what does the server's help buy over training the same
side network on the device?). The reference rows upload nothing: `zero_shot` (the backbone
alone), `device_local` (the side network trained on the device; `generation_local` for a
generation task) and, on request, `local_lora` (LoRA trained on the device: the accuracy
reference; for generation, supervised fine-tuning on the answer tokens).

The utility is the task kind's (`UtilityMetric`): accuracy for classification (from the
device's cached forward passes), the answer NLL per token for generation (lower is better;
from the per-sample sums each run keeps in `<workdir>/device/eval_scores.npz`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attacks.base import ANSWER_TOKENS, LABELS
from protocol.model.backbone import load_backbone
from secure_assist.references.local_lora import LoraSettings
from secure_assist.references.registry import REFERENCES
from protocol.modes.generation.device import GenerationDevice
from protocol.data.instructions import InstructionExample, InstructionTask
from protocol.model.model_io import load_finetuned
from protocol.data.tasks import Example, TaskSpec
from secure_assist.canaries import model_exposures
from secure_assist.config import FinetuneConfig
from secure_assist.task_kinds import task_kind
from secure_assist.task_kinds.generation import canary_exposure, per_sample_sums, run_canaries
from secure_assist.metrics import bootstrap_interval
from secure_assist.training.resources import PeakMemory
from secure_assist.training.summary import RunSummary
from secure_assist.training.workdir import DEVICE_DIR, EVAL_SCORES_FILE

# The run summary's fields every row's utility copies, and its metrics by task kind.
UTILITY_FIELDS = ("n_train", "n_eval", "epochs", "safeguard", "mechanisms")
ACCURACY_KEYS = ("zero_shot_accuracy", "accuracy")
GENERATION_KEYS = ("zero_shot_answer_nll", "eval_answer_nll", "answer_nll_reduction", "answer_nll_reduction_ci95",
                   "zero_shot_token_accuracy", "eval_token_accuracy", "zero_shot_rouge_l", "rouge_l")


@dataclass(frozen=True)
class UtilityMetric:
    """How a task kind's rows are scored and written."""

    key: str  # the summary key of the deployed model's utility (also the row utility's key)
    zero_shot_key: str  # the summary key of the backbone alone
    higher_is_better: bool
    label: str  # in sentences and headers
    summary_keys: tuple[str, ...]  # the run summary's metrics a row's utility copies
    leak_kind: str  # the attack kind whose leak the report sets against the utility (attacks.base)

    def text(self, value: float) -> str:
        """A value as reports write it."""
        return f"{value:.1%}" if self.higher_is_better else f"{value:.3f}"

    @property
    def unit(self) -> str:
        """The unit of `signed` differences."""
        return "points" if self.higher_is_better else "nats/token"

    def signed(self, difference: float) -> str:
        """A difference of two values in `unit`: percentage points, or nats per token."""
        return f"{100 * difference:+.1f}" if self.higher_is_better else f"{difference:+.3f}"

    def judge(self, entry: dict[str, Any]) -> str:
        """'better', 'worse' or 'no' (no significant difference) of a `comparison` entry."""
        if entry["significant"] == "no":
            return "no"
        return "better" if (entry["significant"] == "above") == self.higher_is_better else "worse"


ACCURACY = UtilityMetric("accuracy", "zero_shot_accuracy", True, "accuracy", ACCURACY_KEYS, LABELS)
ANSWER_NLL = UtilityMetric("eval_answer_nll", "zero_shot_answer_nll", False, "answer NLL per token",
                           GENERATION_KEYS, ANSWER_TOKENS)
METRICS = {metric.key: metric for metric in (ACCURACY, ANSWER_NLL)}


def row_metric(row: dict[str, Any]) -> UtilityMetric:
    """The utility metric a row (reference or variant) was scored with."""
    return METRICS[row["utility"]["metric"]]


def row_value(row: dict[str, Any]) -> tuple[float, list[float]]:
    """(utility, its 95% CI) of a row, in its metric."""
    metric = row_metric(row)
    return row["utility"][metric.key], row["utility"][metric.key + "_ci95"]


@dataclass(frozen=True)
class SampleScores:
    """A row's score per evaluation sample as a sum and its weight: pooled over samples, sum over
    weight is the utility (classification: correct / 1, the accuracy; generation: the answer NLL
    summed over the sample's answer tokens / their number, the NLL per token)."""

    total: np.ndarray
    weight: np.ndarray

    def value(self, idx: np.ndarray | slice = slice(None)) -> float:
        """The pooled utility of the samples `idx` (all by default)."""
        return float(self.total[idx].sum() / self.weight[idx].sum())

    def __len__(self) -> int:
        return len(self.total)


ZERO_SHOT, DEVICE_LOCAL, LOCAL_LORA = "zero_shot", "device_local", "local_lora"
# What each reference row is, for the report.
REFERENCE_NOTES = {
    ZERO_SHOT: "the backbone alone: no training, nothing uploaded",
    DEVICE_LOCAL: "the same side network trained on the device: nothing uploaded",
    LOCAL_LORA: f"{REFERENCES[LOCAL_LORA].description}: nothing uploaded",
}


@dataclass(frozen=True)
class EvalData:
    """The audit's evaluation samples and the scoring device (its forwards come from the cache)."""

    config: FinetuneConfig
    task: TaskSpec | InstructionTask
    train: list[Example] | list[InstructionExample]
    evaluate: list[Example] | list[InstructionExample]

    @property
    def metric(self) -> UtilityMetric:
        """The task kind's utility metric."""
        return ANSWER_NLL if isinstance(self.task, InstructionTask) else ACCURACY

    @property
    def labels(self) -> np.ndarray:
        """Evaluation labels."""
        return np.array([e.label for e in self.evaluate])

    def probabilities(self, model_file: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(p_b, deployed probabilities) on the evaluation samples; without a model file, p_b twice."""
        device = task_kind(self.config).make_device(self.config, self.task, None, False, (self.train, self.evaluate))
        side = None if model_file is None else load_finetuned(model_file).side_network
        return device.scores(self.evaluate, side)

    def scores(self, summary: RunSummary) -> tuple[SampleScores, SampleScores]:
        """(zero-shot, deployed) per evaluation sample of one run (its summary): scored on the
        device's cached forwards (classification), or read from the run's per-sample sums."""
        if isinstance(self.task, InstructionTask):
            with np.load(Path(summary.config["workdir"]) / DEVICE_DIR / EVAL_SCORES_FILE) as saved:
                nll, counts = saved["nll"], saved["counts"].astype(float)
            return SampleScores(nll[:, 0], counts), SampleScores(nll[:, 1], counts)
        backbone, deployed = self.probabilities(summary.model_file)
        return accuracy_scores(backbone, self.labels), accuracy_scores(deployed, self.labels)


def summary_utility(summary: RunSummary, metric: UtilityMetric) -> dict[str, Any]:
    """What a row's utility copies from its run: the common fields and the task kind's metrics."""
    return {**{k: getattr(summary, k) for k in UTILITY_FIELDS}, **{k: summary.metrics[k] for k in metric.summary_keys}}


def accuracy_scores(probabilities: np.ndarray, labels: np.ndarray) -> SampleScores:
    """Per-sample correctness of argmax predictions, as scores."""
    correct = correctness(probabilities, labels)
    return SampleScores(correct, np.ones(len(correct)))


def correctness(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample 0/1 correctness of argmax predictions."""
    return (probabilities.argmax(axis=1) == labels).astype(float)


def utility(scores: SampleScores, metric: UtilityMetric, seed: int) -> dict[str, Any]:
    """The row's utility (`metric.key`) and its 95% bootstrap CI (`<key>_ci95`) over samples."""
    return {metric.key: scores.value(), "n_eval": len(scores),
            metric.key + "_ci95": list(bootstrap_interval(scores.value, len(scores), seed)), "metric": metric.key}


def comparison(scores: SampleScores, reference: SampleScores, seed: int) -> dict[str, Any]:
    """Utility difference to a reference row on the same samples (paired bootstrap CI) and
    whether it is significant ('above': significantly larger; see `UtilityMetric.judge`)."""
    def difference(idx: np.ndarray | slice = slice(None)) -> float:
        return scores.value(idx) - reference.value(idx)

    low, high = bootstrap_interval(difference, len(scores), seed)
    return {"difference": difference(), "ci95": [low, high],
            "significant": "above" if low > 0 else "below" if high < 0 else "no"}


def reference_row(name: str, scores: SampleScores, metric: UtilityMetric, cost: dict[str, Any], seed: int,
                  **extra: Any) -> dict[str, Any]:
    """A row that uploads nothing: utility and device cost, no server view, nothing leaks."""
    return {"variant": name, "reference": True, "status": "ok", "note": REFERENCE_NOTES[name],
            "utility": utility(scores, metric, seed),
            "cost": {"bytes_up": 0, "bytes_down": 0, "upload_bytes_per_sample": 0.0, **cost},
            "attacks": [], "leak": "nothing uploaded", **extra}


def local_lora_row(data: EvalData, seed: int, progress: bool) -> tuple[dict[str, Any], SampleScores]:
    """Train LoRA on the device on the audit's training set; (row, per-sample scores): correctness
    for classification, the answer NLL sums of supervised fine-tuning on the answers for generation."""
    backbone = load_backbone(data.config.model)
    settings = LoraSettings(seed=seed)
    train_lora = REFERENCES[LOCAL_LORA].entry_point(task_kind(data.config).name)
    extra: dict[str, Any] = {}
    with PeakMemory() as peak:
        if isinstance(data.task, InstructionTask):
            with train_lora(backbone, data.task, data.train, settings, progress) as (trainable, steps, seconds):
                device = GenerationDevice(backbone, data.task, progress=progress)
                log_probs, _, counts = device.token_scores(data.evaluate, None, scales=(0.0,))
                canaries = run_canaries(data.config)
                if canaries is not None:  # LoRA trains on the whole training split
                    extra["canaries"] = model_exposures(
                        canary_exposure(device, None, canaries, [e.output for e in data.train]), "deployed")
            nll = per_sample_sums(-log_probs[:, 0].astype(np.float64), counts)
            scores = SampleScores(nll, counts.astype(float))
        else:
            run = train_lora(backbone, data.task, data.train, data.evaluate, settings, progress)
            scores = accuracy_scores(run.probabilities, data.labels)
            trainable, steps, seconds = run.trainable_parameters, run.steps, run.train_seconds
    cost = {"device_seconds": seconds, "device_peak_rss_mib": peak.peak_mib, "trainable_parameters": trainable,
            "steps": steps}
    return reference_row(LOCAL_LORA, scores, data.metric, cost, seed, **extra), scores
