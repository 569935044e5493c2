"""End to end over the network vs in process: SmolLM2-135M, SST-2 (2,000 train, full dev).

The same configuration runs twice through the one run path (`run_training`): once with
the server role in this process (`InProcessChannel`), once over TLS 1.3 against a separate
`secure-assist serve` process, as `secure-assist device` runs it. The device's forward
passes are computed once for both (`secure_assist.training.forwards`), so both runs upload
exactly the same device outputs in the same order. Each run trains 20 epochs; the device
then scores the evaluation split locally. Prints JSON: both accuracies, their difference,
whether the deployed φ is bit-identical, bytes, times.

Since the run path does it: the evaluation split is the run's (a seed-fixed sample of the dev
split with --eval-samples, not its first rows), the unprotected run holds out its safeguard's 20%
like every run (it held out nothing and deployed φ as trained before the safeguard applied to every
run), and `*_seconds` are the wall time of a whole run
(upload, training, fetch, local scoring and saving the model; the forward passes are read
from the shared table).

    python benchmarks/transport_e2e.py              # 2,000 train samples, full dev split
    python benchmarks/transport_e2e.py --quick      # 64 train samples, 64 dev samples, 2 epochs
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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from protocol.device.shared_forwards import serving
from protocol.model.model_io import load_finetuned
from protocol.transport.client import NetworkChannel
from protocol.transport.identity import KeyDirectory
from secure_assist.config import FinetuneConfig
from secure_assist.training.forwards import share_forwards
from secure_assist.training.run import run_training
from secure_assist.training.summary import RunSummary


def start_server(keys: KeyDirectory, root: Path) -> tuple[subprocess.Popen, int]:
    """A `secure-assist serve` process on a free local port; returns it and the port."""
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


def timed_run(config: FinetuneConfig, channel: NetworkChannel | None = None) -> tuple[RunSummary, float]:
    """One run through the run path and its wall time."""
    began = time.perf_counter()
    summary = run_training(config, channel, progress=False, overwrite=True)
    return summary, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.train_samples, args.eval_samples, args.epochs = 64, 64, 2
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        local_config = FinetuneConfig(train_samples=args.train_samples, eval_samples=args.eval_samples,
                                      epochs=args.epochs, mode="side_network", reuse_forwards=True,
                                      workdir=str(root / "in-process"))
        network_config = replace(local_config, workdir=str(root / "network-device"))
        tables = share_forwards([local_config], progress=False)  # both configs forward the same texts
        keys = KeyDirectory(root / "keys")
        keys.init(["device"])
        with serving(tables):
            local, local_seconds = timed_run(local_config)
            process, port = start_server(keys, root)
            try:
                remote_channel = NetworkChannel("127.0.0.1", port, *keys.device_context("device"))
                try:
                    remote, remote_seconds = timed_run(network_config, remote_channel)
                finally:
                    remote_channel.close()
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=120)
        local_phi, remote_phi = (load_finetuned(s.model_file).side_network.to_arrays()[0] for s in (local, remote))
    local_acc, remote_acc = local.metrics["accuracy"], remote.metrics["accuracy"]
    report = {
        "model": local_config.model, "n_train": local.n_train, "n_eval": local.n_eval, "epochs": args.epochs,
        "in_process_accuracy": local_acc, "network_accuracy": remote_acc,
        "difference_points": round(100 * (remote_acc - local_acc), 3),
        "phi_bit_identical": local_phi.keys() == remote_phi.keys()
                             and all(np.array_equal(local_phi[k], remote_phi[k]) for k in local_phi),
        "in_process_message_bytes_up": local.bytes_up, "network_wire_bytes_up": remote.bytes_up,
        "network_wire_bytes_down": remote.bytes_down,
        "in_process_seconds": round(local_seconds, 1), "network_seconds": round(remote_seconds, 1),
        "server_exit_code": process.returncode,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
