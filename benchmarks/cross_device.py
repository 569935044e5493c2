"""Threats across devices: a curious member's membership inference on the other devices' samples
through the pool's shared model, and one label-flipping device's cost to the honest ones. Prints JSON.

1. Poisoning: device 0 of the setting below flips every training label; the honest devices'
   accuracy against the clean run (`secure_assist.devices.poisoning`) under pooled PAE.
2. Pooled PAE over `--devices` devices (`--partition`, default iid) of `--train-samples` samples; the
   attacker (device 0) skips its own safeguard so that it deploys the pool's φ whole; it attacks the
   other devices' samples (`secure_assist.devices.cross_membership`) with `--references` references,
   the backbone alone beside it (zero-shot).
3. The positive control: the same with an intentionally overfit shared model (`--control-samples` over
   the same number of devices, `--control-epochs` epochs, no weight decay, adapters at the full rate),
   attacked with `--control-references` references and the same public rows.
4. With `--fedavg`, poisoning under Flower FedAvg too (plain, default rounds).
Each part is also written to `<output>/partial.json` as it completes.

    python benchmarks/cross_device.py --output runs/cross_device           # SmolLM2-135M, 2,000 samples, 20 devices
    python benchmarks/cross_device.py --output runs/cross_device_smoke --model tiny-llama --train-samples 80 \\
        --devices 4 --eval-samples 16 --epochs 2 --references 4 --control-samples 40 --control-references 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path, where benchmarks/attacks.py would
# shadow the attacks package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from secure_assist.audit.public_knowledge import PublicData, public_data  # noqa: E402
from secure_assist.config import FinetuneConfig  # noqa: E402
from secure_assist.data import resolve_data  # noqa: E402
from secure_assist.devices.cross_membership import (  # noqa: E402
    ATTACKER, cross_device_membership, device_trained_texts,
)
from secure_assist.devices.poisoning import device_configs, poisoning_effect  # noqa: E402
from secure_assist.devices.pooled_run import run_pooled  # noqa: E402

KEYS = ("auc", "auc_ci95", "tpr_at_0.01_fpr", "tpr_at_0.01_fpr_ci95", "tpr_at_0.001_fpr", "tpr_at_0.001_fpr_ci95")


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """A cross-device membership report without its ROC points."""
    rows = {}
    for row in ("shared_model", "zero_shot"):
        part = report[row]
        rows[row] = {"members": part["members"], "non_members": part["non_members"], "references": part["references"],
                     "best_attack": part["best_attack"],
                     "attacks": {a["attack"]: {k: a[k] for k in KEYS} for a in part["attacks"]}}
    return {"attacker": report["attacker"], "attacker_samples_left_out": report["attacker_samples_left_out"], **rows}


def pooled_membership(config: FinetuneConfig, workdir: Path, references: int, public: PublicData) -> dict[str, Any]:
    """Pooled PAE of `config`'s devices, the attacker keeping φ whole, and its attack."""
    start = time.perf_counter()
    configs = device_configs(config, workdir, None)
    configs[ATTACKER] = replace(configs[ATTACKER], safeguard_fraction=0.0)
    outcome = run_pooled(configs, progress=False)
    trained = device_trained_texts([c.workdir for c in configs])
    pooled_seconds = time.perf_counter() - start
    report = cross_device_membership(config, outcome.summaries[ATTACKER].model_file, trained, ATTACKER, references,
                                     public=public, progress=False)
    honest = [s.metrics["accuracy"] for i, s in enumerate(outcome.summaries) if i != ATTACKER]
    return {"attacker_accuracy": outcome.summaries[ATTACKER].metrics["accuracy"],
            "other_devices_mean_accuracy": sum(honest) / len(honest),
            "final_train_loss": outcome.summaries[ATTACKER].final_train_loss,
            "pool_samples": outcome.details["pool_samples"], "pooled_seconds": pooled_seconds,
            "membership": summary(report), "membership_seconds": time.perf_counter() - start - pooled_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--epochs", type=int, default=FinetuneConfig.epochs)
    parser.add_argument("--references", type=int, default=16)
    parser.add_argument("--control-samples", type=int, default=200)
    parser.add_argument("--control-epochs", type=int, default=50)
    parser.add_argument("--control-references", type=int, default=8)
    parser.add_argument("--fedavg", action="store_true", help="poisoning under Flower FedAvg too (needs Ray)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    config = FinetuneConfig(model=args.model, train_samples=args.train_samples, eval_samples=args.eval_samples,
                            devices=args.devices, partition=args.partition, epochs=args.epochs, seed=args.seed,
                            reuse_forwards=True, workdir=str(args.output / "unused"))
    task, train, evaluate = resolve_data(replace(config, devices=1))
    # One set of public rows for the setting and the control (a subset of its samples): their passes are made once.
    public = public_data(task, None, None, train + evaluate, args.seed)
    result: dict[str, Any] = {"setting": {k: getattr(config, k) for k in (
        "model", "task", "train_samples", "eval_samples", "devices", "partition", "epochs", "weight_decay", "seed")}}
    partial = args.output / "partial.json"  # each part as it completes: nothing lost on a crash

    def record(key: str, value: dict[str, Any]) -> None:
        result[key] = value
        partial.write_text(json.dumps(result, indent=1))

    poisoning_start = time.perf_counter()
    record("poisoning_pooled", {**poisoning_effect(
        config, lambda configs: run_pooled(configs, progress=False).summaries, args.output / "poisoning_pooled"),
        "seconds": time.perf_counter() - poisoning_start})
    record("pooled", pooled_membership(config, args.output / "pooled", args.references, public))
    control = replace(config, train_samples=args.control_samples, epochs=args.control_epochs, weight_decay=0.0,
                      adapter_lr_scale=1.0)
    record("positive_control", {
        "setting": {"train_samples": args.control_samples, "epochs": args.control_epochs, "weight_decay": 0.0,
                    "adapter_lr_scale": 1.0, "references": args.control_references},
        **pooled_membership(control, args.output / "control", args.control_references, public)})
    if args.fedavg:
        from secure_assist.federated.run import run_fedavg
        from secure_assist.federated.settings import FedAvgSettings

        poisoning_start = time.perf_counter()
        record("poisoning_fedavg", {**poisoning_effect(
            config, lambda configs: run_fedavg(configs, FedAvgSettings(), progress=False).summaries,
            args.output / "poisoning_fedavg"), "seconds": time.perf_counter() - poisoning_start})
    result["wall_seconds"] = time.perf_counter() - start
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
