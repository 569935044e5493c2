"""The device side of PAE fine-tuning against a network server (`secure-assist device`).

Resume *(choice)*: the device draws every sample id up front and writes them with the
ground truth before the first upload, then records in `device/upload_progress.json` how
many batches the server has acknowledged. A restarted device reuses the same ids and
skips acknowledged batches, so it never re-forwards them; a batch whose acknowledgement
was lost is re-sent and the server counts its samples as duplicates (uploads are
idempotent by sample id). Training is requested with `TrainUntil(epochs)`, which is
idempotent too, so a retried request after a server restart never over-trains.

Protections: the configured mechanisms run on the device through the same chain as
`secure-assist finetune` (the device role's transform), the device holds out its
validation split and applies the safeguard. A randomized mechanism's upload is never
resumed (re-sending a batch would release its samples twice, or under another secret).
`he_ckks` is refused before anything is sent: `serve` runs the side-network server,
which does not take encrypted uploads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from protocol.backbone import load_backbone
from protocol.channel import Channel
from protocol.device import DeviceRole, new_sample_ids
from protocol.errors import UserInputError
from protocol.files import write_atomic
from protocol.messages import FetchWeights, SideWeights, TrainReport, TrainUntil, expect
from protocol.side_network import network_from_arrays
from protocol.tasks import Example
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data
from secure_assist.finetune import (DEVICE_DIR, GROUND_TRUTH_FILE, apply_safeguard, build_mechanisms,
                                    evaluate_and_save, hold_out, write_ground_truth)
from secure_assist.mechanisms import MechanismChain
from secure_assist.mechanisms.he_ckks import HeCkksDelta

PROGRESS_FILE = "upload_progress.json"


def _run_key(config: FinetuneConfig, examples: list[Example]) -> str:
    """What a resumed run must share with the interrupted one: the data and the upload layout."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(f"{example.label}\t{example.text}\n".encode())
    digest.update(json.dumps([config.model, config.layers, config.payload_dtype, config.device_batch_size,
                              config.mechanism]).encode())
    return digest.hexdigest()


def network_mechanisms(config: FinetuneConfig) -> MechanismChain:
    """The run's protections, checked before any connection: `he_ckks` is refused (fail closed)."""
    chain = build_mechanisms(config)
    if chain.find(HeCkksDelta) is not None:
        raise UserInputError("he_ckks is not available over the network: `secure-assist serve` trains the side "
                             "network and does not accept CKKS-encrypted uploads; run `secure-assist finetune "
                             "--mechanism he_ckks` instead")
    return chain


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
        rows = [json.loads(line) for line in truth_path.read_text().splitlines() if line]
        ids = np.array([np.frombuffer(bytes.fromhex(r["sample_id"]), np.uint8) for r in rows])
        return ids, int(progress["acknowledged_batches"])
    if truth_path.exists() and not overwrite:
        raise UserInputError(f"{device_dir} already holds a run; pass --overwrite or another --workdir")
    ids = new_sample_ids(len(examples))
    write_ground_truth(truth_path, ids, examples)
    _save_progress(progress_path, key, 0)
    return ids, 0


def _save_progress(path: Path, key: str, acknowledged: int) -> None:
    write_atomic(path, json.dumps({"run_key": key, "acknowledged_batches": acknowledged}).encode())


def upload_resumable(device: DeviceRole, channel: Channel, examples: list[Example], device_dir: Path,
                     key: str, overwrite: bool = False,
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


def run_device_finetune(config: FinetuneConfig, channel: Channel, progress: bool = True, overwrite: bool = False,
                        on_acknowledged: Callable[[int], None] | None = None,
                        mechanisms: MechanismChain | None = None) -> dict[str, Any]:
    """Fine-tune through a (network) channel; the server's hyper-parameters are the server's.
    `mechanisms`: the chain from `network_mechanisms(config)` when the caller checked it already."""
    torch.manual_seed(config.seed)
    workdir = Path(config.workdir)
    task, train, evaluate = resolve_data(config)
    mechanisms = network_mechanisms(config) if mechanisms is None else mechanisms
    train, validation = hold_out(train, config)
    device = DeviceRole(load_backbone(config.model), task, layers=config.layers, payload_dtype=config.payload_dtype,
                        batch_size=config.device_batch_size, progress=progress, transform=mechanisms)
    upload_resumable(device, channel, train, workdir / DEVICE_DIR, _run_key(config, train), overwrite,
                     on_acknowledged, resumable=all(m.deterministic for m in mechanisms.mechanisms))
    uploaded_bytes = channel.bytes_up
    report = expect(channel.request(TrainUntil(epochs_total=config.epochs)), TrainReport)
    weights = expect(channel.request(FetchWeights()), SideWeights)
    side = network_from_arrays(weights.state, weights.architecture)
    mechanisms.restore(side)
    safeguard = apply_safeguard(device, side, validation)
    evaluation = evaluate_and_save(device, config, side, evaluate, workdir)
    return {
        "config": asdict(config),
        "n_train": len(train),
        "mechanisms": mechanisms.describe(),
        "safeguard": safeguard,
        "n_eval": len(evaluate),
        "zero_shot_accuracy": evaluation["zero_shot_accuracy"],
        "accuracy": evaluation["accuracy"],
        "epochs_done": report.epochs_done,
        "cache_samples": report.samples,
        "bytes_up": channel.bytes_up,
        "bytes_down": channel.bytes_down,
        "upload_wire_bytes_this_session": uploaded_bytes,
        "device_forwards": device.forward_samples,
        "device_seconds": device.forward_seconds,
        "reconnects": getattr(channel, "reconnects", 0),
        "model_file": evaluation["model_file"],
        "ground_truth": str(workdir / DEVICE_DIR / GROUND_TRUTH_FILE),
    }
