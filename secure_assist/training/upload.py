"""Epoch 1 on the device: forward and upload every sample once, resumable.

Resume *(choice)*: the device draws every sample id up front and writes them with the
ground truth before the first upload, then records in `device/upload_progress.json` how
many batches the server has acknowledged. A restarted device reuses the same ids and
skips acknowledged batches, so it never re-forwards them; a batch whose acknowledgement
was lost is re-sent and the server counts its samples as duplicates (uploads are
idempotent by sample id). A randomized mechanism's upload is never resumed (re-sending
a batch would release its samples twice, or under another secret).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from protocol.wire.channel import Channel
from protocol.device.forward_device import ForwardDevice, new_sample_ids
from protocol.errors import UserInputError
from protocol.files import write_atomic
from protocol.data.instructions import InstructionExample
from protocol.data.tasks import Example
from secure_assist.config import FinetuneConfig
from secure_assist.training.workdir import GROUND_TRUTH_FILE, ground_truth_ids, write_ground_truth

PROGRESS_FILE = "upload_progress.json"


def run_key(config: FinetuneConfig, mode: str, examples: list[Example | InstructionExample]) -> str:
    """What a resumed run must share with the interrupted one: the data, the mode and the upload layout."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example.record(), sort_keys=True).encode() + b"\n")
    digest.update(json.dumps([config.model, mode, config.layers, config.payload_dtype, config.device_batch_size,
                              config.mechanism, config.template, config.max_answer_tokens]).encode())
    return digest.hexdigest()


def _load_or_assign_ids(device_dir: Path, key: str, examples: list[Example], overwrite: bool,
                        resumable: bool) -> tuple[np.ndarray, int]:
    """(sample ids, acknowledged batches): resumed from the progress file, or fresh."""
    progress_path, truth_path = device_dir / PROGRESS_FILE, device_dir / GROUND_TRUTH_FILE
    if progress_path.is_file() and not overwrite:
        progress = json.loads(progress_path.read_text())
        if progress.get("run_key") != key:
            raise UserInputError(f"{device_dir} holds a different run; pass --overwrite or another --workdir")
        if not resumable:
            raise UserInputError(f"{device_dir} holds an upload under a randomized mechanism; resuming it "
                                 "would release re-sent samples twice, so it is refused (pass --overwrite to "
                                 "start a new run)")
        return ground_truth_ids(truth_path), int(progress["acknowledged_batches"])
    if truth_path.exists() and not overwrite:
        raise UserInputError(f"{device_dir} already holds a run; pass --overwrite or another --workdir")
    ids = new_sample_ids(len(examples))
    write_ground_truth(truth_path, ids, examples)
    _save_progress(progress_path, key, 0)
    return ids, 0


def _save_progress(path: Path, key: str, acknowledged: int) -> None:
    write_atomic(path, json.dumps({"run_key": key, "acknowledged_batches": acknowledged}).encode())


def upload_resumable(device: ForwardDevice, channel: Channel, examples: list[Example | InstructionExample],
                     device_dir: Path, key: str, overwrite: bool = False,
                     on_acknowledged: Callable[[int], None] | None = None, resumable: bool = True) -> np.ndarray:
    """Epoch 1 with resume: forward and upload only batches the server has not acknowledged
    (`resumable` False: an interrupted upload is refused instead of resumed)."""
    ids, done = _load_or_assign_ids(device_dir, key, examples, overwrite, resumable)
    size = device.batch_size
    start = done * size
    batches = device.batches(examples[start:], "device forward + upload")
    for index, (chunk, pivots) in enumerate(batches, start=done):
        device.send(channel, chunk, pivots, ids[index * size:index * size + len(chunk)])
        _save_progress(device_dir / PROGRESS_FILE, key, index + 1)
        if on_acknowledged:
            on_acknowledged(index + 1)
    device.finish(channel)
    return ids
