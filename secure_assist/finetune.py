"""`run_finetune`: one run in this process (device and server roles side by side, or the
device alone for a mode that uploads nothing), through the one run path."""

from __future__ import annotations

from secure_assist.config import FinetuneConfig
from secure_assist.training.run import run_training
from secure_assist.training.summary import RunSummary


def run_finetune(config: FinetuneConfig, progress: bool = True, overwrite: bool = False) -> RunSummary:
    """Fine-tune in process on a fresh work directory; the run's typed summary (`to_json` for its JSON)."""
    return run_training(config, progress=progress, overwrite=overwrite)
