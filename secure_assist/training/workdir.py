"""The layout of a run's work directory, kept apart by side.

<workdir>/server/  the server's view (in-process runs; over the network it is on the server)
<workdir>/server_round<k>/  boosting round k's server view (rounds > 1; round 1's is server/)
<workdir>/device/  the device's own records: ground truth, upload progress, local training,
                   per-sample evaluation scores (generation)
<workdir>/model.safetensors  the deployable model
<workdir>/rounds.jsonl  boosting rounds' records, rewritten as each round ends (rounds > 1)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from protocol.errors import UserInputError
from protocol.files import write_atomic
from protocol.data.instructions import InstructionExample
from protocol.data.tasks import Example

SERVER_DIR = "server"
DEVICE_DIR = "device"
# Where a mode that uploads nothing trains: on the device, never shown to an attack.
LOCAL_TRAINING_DIR = "device/local_training"
MODEL_FILE = "model.safetensors"
# The side output as the device received it, before its safeguard (FinetuneConfig.keep_received_model).
RECEIVED_MODEL_FILE = "received_model.safetensors"
GROUND_TRUTH_FILE = "ground_truth.jsonl"
# Boosting rounds: one JSON line per finished round (the summary's `rounds`), so a stopped run keeps them.
ROUNDS_FILE = "rounds.jsonl"
# Generation runs: per-sample answer NLL and top-1 hits on the evaluation split (device side).
EVAL_SCORES_FILE = "eval_scores.npz"


def server_dir(round_number: int = 1) -> str:
    """The folder of a boosting round's in-process server role (round 1's, every run's, is SERVER_DIR)."""
    return SERVER_DIR if round_number == 1 else f"{SERVER_DIR}_round{round_number}"


def ground_truth_file(round_number: int = 1) -> str:
    """The device's ground truth of a boosting round's uploads (every round under round 1's sample ids)."""
    return GROUND_TRUTH_FILE if round_number == 1 else f"ground_truth_round{round_number}.jsonl"


def write_round_records(workdir: Path, records: list[dict[str, Any]]) -> None:
    """The records of the rounds finished so far, one JSON line each, replacing the earlier file whole."""
    write_atomic(workdir / ROUNDS_FILE, "".join(json.dumps(record) + "\n" for record in records).encode())


def prepare_workdir(workdir: Path, overwrite: bool) -> None:
    """Refuse to mix a new run into an old run's cache unless asked to replace it."""
    if workdir.exists() and any(workdir.iterdir()):
        if not overwrite:
            raise UserInputError(f"{workdir} already holds a run; pass --overwrite or choose another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)


def ground_truth_ids(path: Path) -> np.ndarray:
    """The sample ids of a ground truth file, in its order (the order of the examples it was written for)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    return np.array([np.frombuffer(bytes.fromhex(r["sample_id"]), np.uint8) for r in rows])


def write_ground_truth(path: Path, sample_ids: np.ndarray, examples: list[Example | InstructionExample]) -> None:
    """The device's record of which id carried which text and label (or answer): the auditor's
    ground truth, kept on the device side and never shown to the server or to an attack."""
    lines = [json.dumps({"sample_id": bytes(sid).hex(), **e.record()}) for sid, e in zip(sample_ids, examples)]
    write_atomic(path, ("\n".join(lines) + "\n").encode())
