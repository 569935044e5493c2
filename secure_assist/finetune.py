"""One PAE fine-tuning run, end to end: device and server over a channel, then local
evaluation on the device, with every cost measured."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocol.backbone import load_backbone
from protocol.channel import InProcessChannel
from protocol.device import DeviceRole, PivotBatch, side_scores
from protocol.device_features import ForwardCachingDevice
from protocol.errors import UserInputError
from protocol.files import write_atomic
from protocol.messages import FetchWeights, SideWeights, TrainReport, TrainRequest, expect
from protocol.model_io import FineTunedModel, save_finetuned
from protocol.server import SideTuningServer
from protocol.side_network import network_from_arrays
from protocol.tasks import Example, TaskSpec
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data
from secure_assist.mechanisms import MechanismChain, MechanismSettings
from secure_assist.mechanisms.he_ckks import HeCkksDelta
from secure_assist.resources import PeakMemory
from secure_assist.safeguard import choose_shrink, shrink_network

SERVER_DIR = "server"
DEVICE_DIR = "device"
MODEL_FILE = "model.safetensors"
GROUND_TRUTH_FILE = "ground_truth.jsonl"


def prepare_workdir(workdir: Path, overwrite: bool) -> None:
    """Refuse to mix a new run into an old run's cache unless asked to replace it."""
    if workdir.exists() and any(workdir.iterdir()):
        if not overwrite:
            raise UserInputError(f"{workdir} already holds a run; pass --overwrite or choose another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)


def write_ground_truth(path: Path, sample_ids: np.ndarray, examples: list[Example]) -> None:
    """The device's record of which id carried which text and label: the auditor's ground
    truth, kept on the device side and never shown to the server or to an attack."""
    lines = [json.dumps({"sample_id": bytes(sid).hex(), "label": e.label, "text": e.text})
             for sid, e in zip(sample_ids, examples)]
    write_atomic(path, ("\n".join(lines) + "\n").encode())


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Share of argmax predictions equal to the labels."""
    return float((probabilities.argmax(axis=1) == labels).mean())


def build_mechanisms(config: FinetuneConfig) -> MechanismChain:
    """The configured protections; every configuration error surfaces here, before anything is sent."""
    chain = MechanismChain(config.mechanism, MechanismSettings(
        epsilon=config.epsilon, delta=config.dp_delta, noise_multiplier=config.noise_multiplier, clip=config.clip,
        activation_clip=config.activation_clip, activation_noise_multiplier=config.activation_noise_multiplier,
        seed=config.mechanism_seed))
    return chain


def hold_out(train: list[Example], config: FinetuneConfig) -> tuple[list[Example], list[Example]]:
    """(examples to upload, the device's validation split for the safeguard)."""
    upload, validation = hold_out_indices(len(train), config)
    return [train[i] for i in upload], [train[i] for i in validation]


def hold_out_indices(n_train: int, config: FinetuneConfig) -> tuple[np.ndarray, np.ndarray]:
    """(indices to upload, indices of the device's validation split), seed-fixed."""
    fraction = config.safeguard_fraction
    if fraction is None:
        fraction = 0.0 if config.mechanism == ("none",) else 0.1
    cut = int(n_train * fraction)
    if fraction > 0 and (cut < 1 or cut >= n_train):
        raise UserInputError(f"safeguard_fraction {fraction} leaves no validation or no training sample "
                             f"out of {n_train}")
    order = np.random.default_rng(config.seed).permutation(n_train)
    return order[cut:], order[:cut]


def apply_safeguard(device: DeviceRole, side: Any, validation: list[Example],
                    pivots: PivotBatch | None = None) -> dict[str, Any] | None:
    """Shrink or drop the side output so it never does worse than the backbone on validation
    (`pivots`: the validation split's forward outputs, when the device already has them)."""
    if not validation:
        return None
    backbone_probs, combined = device.scores(validation, side) if pivots is None else side_scores(pivots, side)
    decision = choose_shrink(backbone_probs, combined - backbone_probs, np.array([e.label for e in validation]))
    shrink_network(side, decision.factor)
    return {**asdict(decision), "action": decision.action}


def evaluate_and_save(device: DeviceRole, config: FinetuneConfig, side: Any, evaluate: list[Example],
                      workdir: Path) -> dict[str, Any]:
    """Score the evaluation split on the device (backbone alone, and with the side output: φ or the
    CKKS ridge head) and save the deployable model."""
    labels = np.array([e.label for e in evaluate])
    backbone_probs, combined = device.scores(evaluate, side)
    model_path = workdir / MODEL_FILE
    save_finetuned(model_path, FineTunedModel(backbone=config.model, task=device.task, layers=device.layers,
                                              payload_dtype=config.payload_dtype, side_network=side))
    return {"n_eval": len(evaluate), "zero_shot_accuracy": accuracy(backbone_probs, labels),
            "accuracy": accuracy(combined, labels), "model_file": str(model_path)}


def make_device(config: FinetuneConfig, task: TaskSpec, mechanisms: MechanismChain, progress: bool) -> DeviceRole:
    """The device role of a run, with its forward cache when `reuse_forwards` is set."""
    device_class = ForwardCachingDevice if config.reuse_forwards else DeviceRole
    return device_class(load_backbone(config.model), task, layers=config.layers, payload_dtype=config.payload_dtype,
                        batch_size=config.device_batch_size, progress=progress, transform=mechanisms)


def common_summary(config: FinetuneConfig, workdir: Path, mechanisms: MechanismChain, channel: InProcessChannel,
                   n_train: int, upload_bytes: int, safeguard: dict[str, Any] | None,
                   evaluation: dict[str, Any], peak_rss_mib: float) -> dict[str, Any]:
    """The summary keys every run reports, whatever the server fits."""
    return {
        "config": asdict(config),
        "n_train": n_train,
        "mechanisms": mechanisms.describe(),
        "safeguard": safeguard,
        "n_eval": evaluation["n_eval"],
        "zero_shot_accuracy": evaluation["zero_shot_accuracy"],
        "accuracy": evaluation["accuracy"],
        "bytes_up": channel.bytes_up,
        "bytes_down": channel.bytes_down,
        "upload_bytes_per_sample": upload_bytes / n_train,
        "device_peak_rss_mib": peak_rss_mib,
        "model_file": evaluation["model_file"],
        "server_view": str(workdir / SERVER_DIR),
        "ground_truth": str(workdir / DEVICE_DIR / GROUND_TRUTH_FILE),
    }


def run_finetune(config: FinetuneConfig, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune with PAE and return the JSON-able summary (`he_ckks` runs fit a ridge head instead)."""
    torch.manual_seed(config.seed)
    workdir = Path(config.workdir)
    task, train, evaluate = resolve_data(config)
    mechanisms = build_mechanisms(config)
    if mechanisms.find(HeCkksDelta) is not None:
        # Imported here: the CKKS path builds on this module's helpers.
        from secure_assist.he_finetune import run_he_finetune

        return run_he_finetune(config, task, train, evaluate, mechanisms, progress, overwrite)
    train, validation = hold_out(train, config)
    prepare_workdir(workdir, overwrite)
    device = make_device(config, task, mechanisms, progress)
    server = SideTuningServer(workdir / SERVER_DIR, config.server_training())
    channel = InProcessChannel(server)
    try:
        with PeakMemory() as epoch1:
            sample_ids = device.upload(channel, train)
        write_ground_truth(workdir / DEVICE_DIR / GROUND_TRUTH_FILE, sample_ids, train)
        uploaded_bytes = channel.bytes_up
        forwards_epoch1, device_seconds_epoch1 = device.forward_samples, device.forward_seconds
        server_seconds_epoch1 = server.compute_seconds
        report = TrainReport(epochs_done=1, samples=len(train), loss=float("nan"))
        if config.epochs > 1:
            report = expect(channel.request(TrainRequest(epochs=config.epochs - 1)), TrainReport)
        cached_epoch_seconds = (server.compute_seconds - server_seconds_epoch1) / max(1, config.epochs - 1)
        forwards_after_epoch1 = device.forward_samples - forwards_epoch1
        weights = expect(channel.request(FetchWeights()), SideWeights)
    finally:
        server.close()
    side = network_from_arrays(weights.state, weights.architecture)
    mechanisms.restore(side)
    safeguard = apply_safeguard(device, side, validation)
    evaluation = evaluate_and_save(device, config, side, evaluate, workdir)
    return {
        **common_summary(config, workdir, mechanisms, channel, len(train), uploaded_bytes, safeguard, evaluation,
                         epoch1.peak_mib),
        "head": "side_network",
        "epochs": config.epochs,
        "final_train_loss": report.loss if config.epochs > 1 else None,
        "device_seconds": device.forward_seconds + device.reused_forward_seconds,
        "device_forwards_reused": device.reused_forwards,
        "device_seconds_epoch1": device_seconds_epoch1,
        "device_forwards_epoch1": forwards_epoch1,
        "device_forwards_after_epoch1": forwards_after_epoch1,
        "server_seconds": server.compute_seconds,
        "server_seconds_per_cached_epoch": cached_epoch_seconds,
        "cache_samples": report.samples,
        "cache_reads": report.samples * (config.epochs - 1),
    }
