"""Pooled PAE at smoke scale: what pooling many small devices buys over each device alone.

The training subset is split over --devices devices (seed-fixed partition); every device uploads its share
through its own mechanisms (plain here) into one in-process pool (`run_pooled`), the server trains one side
network on the union, and every device deploys it behind its own safeguard and is scored on the common
evaluation split. The reference is one device alone: `device_local` on device 0's share (the same side
network, trained on the device). Forward passes are reused from the device's disk cache (`reuse_forwards`).
Prints one JSON object: accuracy (pooled per device: mean, min, max; device 0 alone; zero-shot), bytes up
per device, the server's seconds (uploads and the pool's training) and the wall time.

    python benchmarks/pooled.py --workdir runs/pooled                          # SmolLM2-135M, SST-2, 2,000 / 20
    python benchmarks/pooled.py --workdir runs/pooled_smoke --model tiny-llama --train-samples 100 --devices 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np

from secure_assist.config import FinetuneConfig
from secure_assist.devices.pooled_run import run_pooled
from secure_assist.finetune import run_finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/pooled"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=None, help="default: the whole dev split")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    base = FinetuneConfig(model=args.model, task="sst2", train_samples=args.train_samples,
                          eval_samples=args.eval_samples, devices=args.devices, partition=args.partition,
                          epochs=args.epochs, seed=args.seed, mechanism_seed=args.seed, reuse_forwards=True)
    configs = [replace(base, device_index=i, workdir=str(args.workdir / "devices" / f"d{i}"))
               for i in range(args.devices)]
    began = time.perf_counter()
    pool = run_pooled(configs, progress=not args.quiet, pool_dir=args.workdir / "server", overwrite=True)
    pooled_wall = time.perf_counter() - began
    alone = run_finetune(replace(configs[0], mode="device_local", workdir=str(args.workdir / "device_local")),
                         progress=not args.quiet, overwrite=True)
    accuracy = np.array([s.metrics["accuracy"] for s in pool.summaries])
    print(json.dumps({
        "model": args.model, "task": "sst2", "train_samples": args.train_samples, "devices": args.devices,
        "partition": args.partition, "epochs": args.epochs, "n_eval": pool.summaries[0].n_eval,
        "pool_samples": pool.details["pool_samples"], "samples_per_device": [s.n_train for s in pool.summaries],
        "accuracy": {
            "pooled_mean": float(accuracy.mean()), "pooled_min": float(accuracy.min()),
            "pooled_max": float(accuracy.max()), "pooled_device0": float(accuracy[0]),
            "device_local_device0": alone.metrics["accuracy"],
            "zero_shot": pool.summaries[0].metrics["zero_shot_accuracy"],
        },
        "safeguard_actions": [s.safeguard["action"] if s.safeguard else None for s in pool.summaries],
        "bytes_up_per_device": float(np.mean([s.bytes_up for s in pool.summaries])),
        "server_seconds": pool.server_seconds, "pooled_wall_seconds": pooled_wall,
        "device_local_device_train_seconds": alone.device_train_seconds,
    }, indent=1))


if __name__ == "__main__":
    main()
