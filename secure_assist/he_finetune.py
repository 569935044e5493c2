"""One `he_ckks` run end to end: Δ leaves the device only CKKS-encrypted, the head comes back
encrypted and is decrypted, safeguarded and deployed on the device.

Device: one forward pass over its training set (the validation split's outputs feed the
safeguard, the rest is uploaded through the mechanism chain, whose last stage packs Δ
into ciphertexts), then a fit request carrying the *public* CKKS context. Server
(`HeHeadServer`, recording its view in `<workdir>/server`): label-free PCA features of the
activations it received and enc(W) = M·enc(Δ). Device: decrypt W, shrink or drop the head
on its validation split, evaluate, save the model file (backbone + feature map + W).
No side-network body is trained in this mode; the server keeps no decryption of anything.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocol.channel import InProcessChannel
from protocol.device import DeviceRole, PivotBatch, new_sample_ids
from protocol.he_messages import HeFitReply
from protocol.messages import expect
from protocol.tasks import Example, TaskSpec
from secure_assist.config import FinetuneConfig
from secure_assist.finetune import (DEVICE_DIR, GROUND_TRUTH_FILE, SERVER_DIR, apply_safeguard, common_summary,
                                    evaluate_and_save, hold_out_indices, make_device, prepare_workdir,
                                    write_ground_truth)
from secure_assist.mechanisms import MechanismChain
from secure_assist.mechanisms.he_ckks import HeCkksDelta
from secure_assist.mechanisms.he_server import HeHeadServer
from secure_assist.resources import PeakMemory


def forward_all(device: DeviceRole, examples: list[Example]) -> PivotBatch:
    """The device's forward outputs for every example (one pass; from its cache when it keeps one)."""
    return PivotBatch.concatenate([pivots for _, pivots in device.batches(examples, "device forward")])


def rows(pivots: PivotBatch, indices: np.ndarray) -> PivotBatch:
    """The forward outputs of some examples."""
    index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    return PivotBatch(activations=pivots.activations[index], label_logits=pivots.label_logits[index])


def upload_outputs(device: DeviceRole, channel: InProcessChannel, examples: list[Example],
                   pivots: PivotBatch) -> np.ndarray:
    """Epoch 1 from outputs already computed: batch by batch through the mechanism chain; the ids used."""
    ids = new_sample_ids(len(examples))
    for start in range(0, len(examples), device.batch_size):
        stop = start + device.batch_size
        device.send(channel, examples[start:stop], rows(pivots, np.arange(start, min(stop, len(examples)))),
                    ids[start:stop])
    device.finish(channel)
    return ids


def run_he_finetune(config: FinetuneConfig, task: TaskSpec, train: list[Example], evaluate: list[Example],
                    mechanisms: MechanismChain, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Fit, decrypt, safeguard, evaluate and save the CKKS ridge head; the JSON-able summary."""
    he = mechanisms.find(HeCkksDelta)
    assert he is not None, "run_he_finetune needs the he_ckks mechanism in the chain"
    workdir = Path(config.workdir)
    upload_idx, validation_idx = hold_out_indices(len(train), config)
    uploaded = [train[i] for i in upload_idx]
    validation = [train[i] for i in validation_idx]
    prepare_workdir(workdir, overwrite)
    device = make_device(config, task, mechanisms, progress)
    server = HeHeadServer(workdir / SERVER_DIR, progress=progress)
    channel = InProcessChannel(server)
    try:
        with PeakMemory() as peak:
            pivots = forward_all(device, train)
            sample_ids = upload_outputs(device, channel, uploaded, rows(pivots, upload_idx))
            write_ground_truth(workdir / DEVICE_DIR / GROUND_TRUTH_FILE, sample_ids, uploaded)
            upload_bytes = channel.bytes_up
            request = he.fit_request()
            reply = expect(channel.request(request), HeFitReply)
            start = time.perf_counter()
            head = he.decrypt_head(reply)
            decrypt_seconds = time.perf_counter() - start
    finally:
        server.close()
    safeguard = apply_safeguard(device, head, validation, rows(pivots, validation_idx))
    evaluation = evaluate_and_save(device, config, head, evaluate, workdir)
    forward_seconds = device.forward_seconds + device.reused_forward_seconds
    return {
        **common_summary(config, workdir, mechanisms, channel, len(uploaded), upload_bytes, safeguard, evaluation,
                         peak.peak_mib),
        "head": "ridge_head",
        # A closed-form fit: one upload, no cached epochs, no training loss.
        "epochs": 1,
        "final_train_loss": None,
        "device_seconds": forward_seconds + he.encrypt_seconds + decrypt_seconds,
        "device_forwards_reused": device.reused_forwards,
        "device_seconds_epoch1": forward_seconds + he.encrypt_seconds,
        "device_forwards_epoch1": device.forward_samples,
        "device_forwards_after_epoch1": 0,
        "server_seconds": server.compute_seconds,
        "server_seconds_per_cached_epoch": 0.0,
        "cache_samples": len(uploaded),
        "cache_reads": 0,
        "he_device_encrypt_ms_per_sample": 1000 * he.encrypt_seconds / len(uploaded),
        "he_ciphertext_bytes_per_sample": he.ciphertext_bytes / len(uploaded),
        "he_public_context_bytes": int(len(request.public_context)),
        "he_server_fit_seconds": server.fit_seconds,
        "he_device_decrypt_seconds": decrypt_seconds,
        "he_fit_reply_bytes": int(len(reply.ciphertexts)),
        "he_fit_reply_ciphertexts": int(len(reply.ciphertext_sizes)),
        "he_features": int(reply.components.shape[0]),
    }
