"""Utility and cost of each audit row on the same evaluation samples, and the reference rows.

Every row is scored per evaluation sample (from the device's cached forward passes), so
accuracies get bootstrap CIs and differences between rows get paired CIs: "vs zero-shot"
(is the side output worth deploying?) and "vs device_local" (what does the server's help
buy over training the same side network on the device?). The reference rows upload
nothing: `zero_shot` (the backbone alone), `device_local` (the side network trained on the
device) and, on request, `local_lora` (LoRA trained on the device: the accuracy reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.backbone import load_backbone
from protocol.baselines.local_lora import LoraSettings, run_local_lora
from protocol.model_io import load_finetuned
from protocol.tasks import Example, TaskSpec
from secure_assist.config import FinetuneConfig
from secure_assist.metrics import bootstrap_interval, paired_difference
from secure_assist.resources import PeakMemory
from secure_assist.run import make_device

ZERO_SHOT, DEVICE_LOCAL, LOCAL_LORA = "zero_shot", "device_local", "local_lora"
# What each reference row is, for the report.
REFERENCE_NOTES = {
    ZERO_SHOT: "the backbone alone: no training, nothing uploaded",
    DEVICE_LOCAL: "the same side network trained on the device: nothing uploaded",
    LOCAL_LORA: "LoRA (peft, r = 8 on the attention projections) trained on the device: nothing uploaded",
}


@dataclass(frozen=True)
class EvalData:
    """The audit's evaluation samples and the scoring device (its forwards come from the cache)."""

    config: FinetuneConfig
    task: TaskSpec
    train: list[Example]
    evaluate: list[Example]

    @property
    def labels(self) -> np.ndarray:
        """Evaluation labels."""
        return np.array([e.label for e in self.evaluate])

    def probabilities(self, model_file: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(p_b, deployed probabilities) on the evaluation samples; without a model file, p_b twice."""
        device = make_device(self.config, self.task, None, False, (self.train, self.evaluate))
        side = None if model_file is None else load_finetuned(model_file).side_network
        return device.scores(self.evaluate, side)


def correctness(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample 0/1 correctness of argmax predictions."""
    return (probabilities.argmax(axis=1) == labels).astype(float)


def utility(correct: np.ndarray, seed: int) -> dict[str, Any]:
    """Accuracy and its 95% bootstrap CI."""
    return {"accuracy": float(correct.mean()), "n_eval": len(correct),
            "accuracy_ci95": list(bootstrap_interval(lambda idx: float(correct[idx].mean()), len(correct), seed))}


def comparison(correct: np.ndarray, reference: np.ndarray, seed: int) -> dict[str, Any]:
    """Accuracy difference to a reference row on the same samples (paired CI) and whether it is significant."""
    outcome = paired_difference(correct, reference, seed)
    low, high = outcome["ci95"]
    return {"difference": outcome["difference"], "ci95": [low, high],
            "significant": "above" if low > 0 else "below" if high < 0 else "no"}


def reference_row(name: str, correct: np.ndarray, cost: dict[str, Any], seed: int, **extra: Any) -> dict[str, Any]:
    """A row that uploads nothing: utility and device cost, no server view, nothing leaks."""
    return {"variant": name, "reference": True, "status": "ok", "note": REFERENCE_NOTES[name],
            "utility": utility(correct, seed),
            "cost": {"bytes_up": 0, "bytes_down": 0, "upload_bytes_per_sample": 0.0, **cost},
            "attacks": [], "leak": "nothing uploaded", **extra}


def local_lora_row(data: EvalData, seed: int, progress: bool) -> tuple[dict[str, Any], np.ndarray]:
    """Train LoRA on the device on the audit's training set; (row, per-sample correctness)."""
    backbone = load_backbone(data.config.model)
    with PeakMemory() as peak:
        run = run_local_lora(backbone, data.task, data.train, data.evaluate, LoraSettings(seed=seed), progress)
    correct = correctness(run.probabilities, data.labels)
    cost = {"device_seconds": run.train_seconds, "device_peak_rss_mib": peak.peak_mib,
            "trainable_parameters": run.trainable_parameters, "steps": run.steps}
    return reference_row(LOCAL_LORA, correct, cost, seed), correct
