"""`run_finetune`: one run in this process (device and server roles side by side, or the
device alone for a mode that uploads nothing), through the one run path."""

from __future__ import annotations

from typing import Any

from secure_assist.config import FinetuneConfig
from secure_assist.training.run import run_training


def run_finetune(config: FinetuneConfig, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune in process and return the JSON-able summary (`RunSummary.to_json`)."""
    return run_training(config, progress=progress, overwrite=overwrite).to_json()
