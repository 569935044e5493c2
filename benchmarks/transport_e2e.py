"""End to end over the network vs in process: SmolLM2-135M, SST-2 (2,000 train, full dev).

The device's SmolLM2-135M pivot activations and label logits come from its feature
cache (`protocol.device.features`, computed once by `DeviceRole`), so both runs upload
exactly the same device outputs in the same order: once through `InProcessChannel` to a
`SideTuningServer`, once over TLS 1.3 to a separate `secure-assist serve` process. Each
run trains 20 epochs; the device then fetches φ and scores the dev split locally.
Prints JSON: both accuracies, their difference, whether φ is bit-identical, bytes, times.

    python benchmarks/transport_e2e.py              # 2,000 train samples, full dev split
    python benchmarks/transport_e2e.py --quick      # 64 train samples, 64 dev samples
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from protocol.model.backbone import load_backbone
from protocol.wire.channel import Channel, InProcessChannel
from protocol.device.forward_device import DeviceRole, PivotBatch, new_sample_ids
from protocol.device.features import encode_dataset
from protocol.wire.messages import FetchWeights, Hello, SideWeights, TrainReport, TrainUntil, expect
from protocol.server.training_settings import ServerTraining
from protocol.model.side_network import network_from_arrays
from protocol.data.tasks import SST2, builtin_split, sample
from protocol.transport.client import NetworkChannel
from protocol.transport.identity import KeyDirectory
from protocol.modes.host import ModeHost


def fine_tune(channel: Channel, device: DeviceRole, train, features: PivotBatch, ids: np.ndarray,
              epochs: int) -> tuple[SideWeights, float]:
    """Name the mode, upload every cached batch, train to `epochs`, fetch φ; return φ and the wall time."""
    began = time.perf_counter()
    channel.request(Hello(mode="side_network"))
    size = device.batch_size
    for start in range(0, len(train), size):
        stop = min(start + size, len(train))
        pivots = PivotBatch(activations=features.activations[start:stop], label_logits=features.label_logits[start:stop])
        device.send(channel, train[start:stop], pivots, ids[start:stop])
    device.finish(channel)
    expect(channel.request(TrainUntil(epochs_total=epochs)), TrainReport)
    weights = expect(channel.request(FetchWeights()), SideWeights)
    return weights, time.perf_counter() - began


def dev_accuracy(weights: SideWeights, features: PivotBatch, labels: np.ndarray) -> float:
    side = network_from_arrays(weights.state, weights.architecture).eval()
    with torch.inference_mode():
        scores = torch.softmax(features.label_logits, -1) + side(features.activations)
    return float((scores.argmax(-1).numpy() == labels).mean())


def start_server(keys: KeyDirectory, root: Path) -> tuple[subprocess.Popen, int]:
    ready = root / "ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "secure_assist.cli", "serve", "--keys", str(keys.root), "--workdir",
         str(root / "network-server"), "--port", "0", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=open(root / "serve.log", "wb"), env={**os.environ, "OMP_NUM_THREADS": "1"})
    while not ready.exists():
        if process.poll() is not None:
            raise SystemExit((root / "serve.log").read_text())
        time.sleep(0.1)
    return process, int(ready.read_text().rsplit(":", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.train_samples, args.eval_samples = 64, 64
    torch.set_num_threads(1)
    train = sample(builtin_split("sst2", "train"), args.train_samples, 0)
    dev = builtin_split("sst2", "dev")[:args.eval_samples]
    device = DeviceRole(load_backbone(), SST2, batch_size=16, progress=False)
    train_features, dev_features = encode_dataset(device, train), encode_dataset(device, dev)
    labels = np.array([e.label for e in dev])
    ids = new_sample_ids(len(train))
    report: dict[str, object] = {"model": device.backbone.name, "n_train": len(train), "n_eval": len(dev),
                                 "epochs": args.epochs}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = ModeHost(root / "in-process-server", ("side_network",), ServerTraining())
        local = InProcessChannel(server)
        local_weights, local_seconds = fine_tune(local, device, train, train_features, ids, args.epochs)
        server.close()
        keys = KeyDirectory(root / "keys")
        keys.init(["device"])
        process, port = start_server(keys, root)
        try:
            context, pinned = keys.device_context("device")
            remote = NetworkChannel("127.0.0.1", port, context, pinned)
            remote_weights, remote_seconds = fine_tune(remote, device, train, train_features, ids, args.epochs)
            remote.close()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
    local_acc, remote_acc = dev_accuracy(local_weights, dev_features, labels), dev_accuracy(remote_weights, dev_features, labels)
    report.update({
        "in_process_accuracy": local_acc, "network_accuracy": remote_acc,
        "difference_points": round(100 * (remote_acc - local_acc), 3),
        "phi_bit_identical": all(np.array_equal(local_weights.state[k], remote_weights.state[k]) for k in local_weights.state),
        "in_process_message_bytes_up": local.bytes_up, "network_wire_bytes_up": remote.bytes_up,
        "network_wire_bytes_down": remote.bytes_down,
        "in_process_seconds": round(local_seconds, 1), "network_seconds": round(remote_seconds, 1),
        "server_exit_code": process.returncode,
    })
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
