"""Federated averaging (Flower simulation engine, Ray backend) with many devices on this machine (prints JSON).

Runs `run_fedavg` over `--devices` devices (iid shares of `--train-samples`), polling the whole
process tree (this process, the simulation's child, Ray's processes and workers) for the sum
of their resident memory. Reports the wall time of each phase, that peak RSS, the per-device
local-training seconds per round (from the devices' own logs), the dev accuracy of the deployed
models and the projected simulation time on a Ray cluster of M machines:

    T(M) = O + R * ceil(N / (M * S)) * t

N devices per round, R rounds, S = cores / cpus_per_client devices trained at once per machine,
t the median per-device round time measured here, O the measured simulation time minus its
rounds on this machine (O = T(1) - R * ceil(N / S) * t: Ray and actor start-up, aggregation).
The devices' forward passes (`start`) run on the devices themselves in a deployment; here they
run one after another in this process and are reported apart.

    python benchmarks/fedavg_scale.py --devices 100 --model tiny-llama --rounds 5 --output runs/fedavg-scale
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would shadow packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import psutil

from secure_assist.config import FinetuneConfig
from secure_assist.federated import device_side
from secure_assist.federated.run import run_fedavg
from secure_assist.federated.settings import FedAvgSettings

MACHINES = (1, 4, 16)


class TreeRss(threading.Thread):
    """Polls the sum of RSS over this process and all its descendants; keeps the peak."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak_bytes, self.stop = interval, 0, threading.Event()

    def run(self) -> None:
        root = psutil.Process()
        while not self.stop.is_set():
            total = 0
            for process in [root, *root.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_bytes = max(self.peak_bytes, total)
            self.stop.wait(self.interval)


def projection(simulation_seconds: float, rounds: int, devices: int, slots: int, per_device: float) -> dict[str, float]:
    """T(M) for each M of `MACHINES` (see the module docstring)."""
    overhead = max(0.0, simulation_seconds - rounds * math.ceil(devices / slots) * per_device)
    return {str(m): overhead + rounds * math.ceil(devices / (m * slots)) * per_device for m in MACHINES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=None, help="default: the whole dev set")
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--variant", default="plain")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--reuse-forwards", action="store_true", help="read the devices' forwards from the disk cache")
    parser.add_argument("--output", default="runs/fedavg-scale")
    args = parser.parse_args()
    base = FinetuneConfig(model=args.model, train_samples=args.train_samples, eval_samples=args.eval_samples,
                          devices=args.devices, partition=args.partition, reuse_forwards=args.reuse_forwards)
    configs = [replace(base, device_index=i, workdir=str(Path(args.output) / f"device_{i:03d}"))
               for i in range(args.devices)]
    settings = FedAvgSettings(variant=args.variant, rounds=args.rounds, local_epochs=args.local_epochs)
    monitor = TreeRss()
    monitor.start()
    start = time.perf_counter()
    outcome = run_fedavg(configs, settings, progress=True, updates_dir=Path(args.output) / "server", overwrite=True)
    wall = time.perf_counter() - start
    monitor.stop.set()
    monitor.join()
    per_round = [r["train_seconds"] for s in outcome.summaries
                 for r in device_side.read_log(Path(s.config["workdir"]), device_side.ROUNDS_FILE)]
    slots = max(1, int((os.cpu_count() or 1) / settings.cpus_per_client))
    median = float(np.median(per_round))
    accuracy = [s.metrics["accuracy"] for s in outcome.summaries]
    print(json.dumps({
        "model": args.model, "devices": args.devices, "train_samples": args.train_samples,
        "partition": args.partition, "variant": args.variant, "rounds": args.rounds,
        "local_epochs": args.local_epochs, "cores": os.cpu_count(), "parallel_devices_per_machine": slots,
        "wall_seconds": wall, "simulation_seconds": outcome.details["simulation_seconds"],
        "start_and_deploy_seconds": wall - outcome.details["simulation_seconds"],
        "server_seconds": outcome.server_seconds, "peak_rss_mib_process_tree": monitor.peak_bytes / 2**20,
        "device_round_seconds": {"median": median, "mean": float(np.mean(per_round)),
                                 "p90": float(np.percentile(per_round, 90)), "max": float(np.max(per_round))},
        "device_bytes_up_per_round": float(np.mean([s.details["fedavg_bytes_up_per_round"]
                                                    for s in outcome.summaries])),
        "device_bytes_down_per_round": float(np.mean([s.details["fedavg_bytes_down_per_round"]
                                                      for s in outcome.summaries])),
        "accuracy_mean": float(np.mean(accuracy)), "accuracy_min": float(np.min(accuracy)),
        "accuracy_max": float(np.max(accuracy)),
        "safeguard_actions": {a: sum(1 for s in outcome.summaries if (s.safeguard or {}).get("action") == a)
                              for a in ("kept", "shrunk", "dropped")},
        "projected_simulation_seconds_on_M_machines": projection(outcome.details["simulation_seconds"], args.rounds,
                                                                  args.devices, slots, median),
        "projection": "T(M) = O + R * ceil(N / (M * S)) * t, t = median device round seconds, "
                      "O = measured simulation seconds - R * ceil(N / S) * t",
    }, indent=1))


if __name__ == "__main__":
    main()
