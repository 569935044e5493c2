"""A compare row of a registered reference (`secure_assist.references`: local LoRA, MobiLLM):
trained and scored for real on the point's data, shaped like every other point's result.

A reference speaks no side-tuning protocol, so its server (if any) keeps no view for the
attacks: its leakage entries are empty and `uploads` says what its server receives.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from protocol.model.backbone import load_backbone
from secure_assist.audit.point import PointData
from secure_assist.audit.rows import EvalData
from secure_assist.compare.grid import SweepPoint
from secure_assist.references.registry import get_reference
from secure_assist.training.resources import PeakMemory


def reference_result(point: SweepPoint, data: PointData, progress: bool) -> dict[str, Any]:
    """Train the point's reference on the point's training rows and score it on its evaluation rows."""
    start = time.perf_counter()
    config, reference = point.config, get_reference(point.reference)
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    labels = np.array([e.label for e in data.evaluate])
    zero_shot, _ = EvalData(config, data.task, data.train, data.evaluate).probabilities(None)
    with PeakMemory() as peak:
        run = reference.scored_run()(load_backbone(config.model), data.task, data.train, data.evaluate, workdir,
                                     config.epochs, config.seed, progress)
    accuracy = float((run.probabilities.argmax(axis=1) == labels).mean())
    zero_shot_accuracy = float((zero_shot.argmax(axis=1) == labels).mean())
    cost = {"bytes_up": run.bytes_up, "bytes_down": run.bytes_down,
            "upload_bytes_per_sample": run.bytes_up / max(1, len(data.train)), "device_seconds": run.device_seconds,
            "server_seconds": run.server_seconds, "server_seconds_per_cached_epoch": 0.0,  # nothing is cached
            "device_forwards_after_epoch1": run.device_forwards_after_epoch1, "device_peak_rss_mib": peak.peak_mib}
    return {"utility": {"n_train": len(data.train), "n_eval": len(data.evaluate), "accuracy": accuracy,
                        "zero_shot_accuracy": zero_shot_accuracy, "delta_vs_zero_shot": accuracy - zero_shot_accuracy},
            "cost": cost, "attacks": [], "uploads": reference.uploads,
            "leakage": {"best": None, "best_delta": None, "activations_only_baseline": None},
            "workdir": str(workdir), "seconds": time.perf_counter() - start}
