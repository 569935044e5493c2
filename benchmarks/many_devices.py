"""Many devices: the many-device audit (`secure-assist audit --devices N --partition P`) at each device
count and partition, and the acceptance table's numbers from its reports. Prints JSON.

Per setting (N, partition) one audit: zero-shot, device_local, pooled plain / label_rr@4 / gaussian@1,
FedAvg plain / +DP / +SecAgg. Per row: accuracy over devices (mean, p10, min) on the common evaluation
split and on each device's own distribution, what the server buys per device over device_local (paired
per device, 95% CI by bootstrap over devices), the best server-side label leak against the activations-only
baseline (mean and max over devices), cross-device membership TPR at 1% FPR where measured, bytes and
seconds per device and the server's seconds. A setting the audit refuses (dirichlet:0.5 cannot split 2,000
samples over N = 100 devices: some would hold 0-1 samples) is listed with its reason, and the others run. The
devices' forward passes are computed once per audit (`reuse_forwards`) and read back from the device cache by
the next audits.

    python benchmarks/many_devices.py --output runs/many_devices --poisoning   # SmolLM2-135M, 2,000 samples: N = 20, 100
    python benchmarks/many_devices.py --output runs/many_devices --devices 100 --partitions dirichlet_equal:0.5
    python benchmarks/many_devices.py --output runs/many_devices_20 --devices 20 --partitions iid
    python benchmarks/many_devices.py --output runs/many_devices_trusting --devices 20 --partitions iid \\
        --safeguard-fraction 0   # every device deploys what it receives (or trains) as it is
    python benchmarks/many_devices.py --output runs/many_devices_smoke --model tiny-llama --train-samples 60 \\
        --eval-samples 16 --devices 3 --partitions iid --fedavg plain
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path, where benchmarks/attacks.py would
# shadow the attacks package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from protocol.errors import UserInputError  # noqa: E402
from secure_assist.audit.config import DEVICES_DEFAULT_VARIANTS, FEDAVG_VARIANTS, AuditConfig  # noqa: E402
from secure_assist.audit.report import write_reports  # noqa: E402
from secure_assist.audit.runner import run_audit  # noqa: E402

# Δ-based and activations-only label attacks (the leak and its activations-only baseline), and LiRA offline for
# cross-device membership.
ATTACKS = ("delta_argmax", "clustering_delta", "public_head_zero_shot", "model_completion_k8", "lira_offline")


def _items(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


def _mean_max(entry: dict[str, Any] | None) -> dict[str, float] | None:
    return None if entry is None else {"mean": entry["mean"], "max": entry["max"]}


def table_row(row: dict[str, Any]) -> dict[str, Any]:
    """The acceptance table's numbers of one audit row."""
    if row["status"] != "ok":
        return {"row": row["variant"], "status": row["status"], "reason": row["reason"]}
    utility, gain, cost, leak = row["utility"], row["gain_vs_device_local"], row["cost"], row.get("leak") or {}
    membership = row["membership"]
    return {
        "row": row["variant"],
        "accuracy": {split: {k: utility[split][k] for k in ("mean", "p10", "min")} for split in utility},
        "gain_vs_device_local": {split: {"mean": gain[split]["mean"], "ci95": gain[split]["ci95"],
                                         "significant": gain[split]["significant"]} for split in gain},
        "best_leak": _mean_max(leak.get("best")),
        "activations_only_baseline": _mean_max(leak.get("activations_only_baseline")),
        "leak_over_activations_only": None if leak.get("over_activations_only") is None
        else {k: leak["over_activations_only"][k] for k in ("mean", "ci95")},
        "fedavg_update_leak": None if "update_leak" not in row else {
            k: row["update_leak"][k] for k in ("view", "mean_tv", "prior_mean_tv")},
        "membership_tpr_at_1pct_fpr": (membership["shared_model"]["best"] or {}).get("tpr_at_0.01_fpr")
        if membership["status"] == "ok" else membership["reason"],
        "bytes_up_per_device": cost["bytes_up"]["mean"], "bytes_down_per_device": cost["bytes_down"]["mean"],
        "device_seconds": {"mean": cost["device_seconds"]["mean"], "max": cost["device_seconds"]["max"]},
        "server_seconds": cost["server_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=None, help="default: the whole SST-2 dev split (872)")
    parser.add_argument("--devices", type=lambda t: tuple(int(p) for p in _items(t)), default=(20, 100))
    parser.add_argument("--partitions", type=_items, default=("iid", "dirichlet:0.5"))
    parser.add_argument("--variants", type=_items, default=DEVICES_DEFAULT_VARIANTS)
    parser.add_argument("--fedavg", type=_items, default=FEDAVG_VARIANTS)
    parser.add_argument("--attacks", type=_items, default=ATTACKS)
    parser.add_argument("--safeguard-fraction", type=float, default=None,
                        help="every device's safeguard share (0: off, each device deploys its model as trained or "
                             "received; default: the run's)")
    parser.add_argument("--poisoning", action="store_true", help="also one label-flipping device (the audit's --poisoning)")
    parser.add_argument("--output", default="runs/many_devices")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    results = []
    for devices in args.devices:
        for partition in args.partitions:
            start = time.perf_counter()
            config = AuditConfig(model=args.model, train_samples=args.train_samples, eval_samples=args.eval_samples,
                                 devices=devices, partition=partition, variants=args.variants, fedavg=args.fedavg,
                                 attacks=args.attacks, poisoning=args.poisoning,
                                 safeguard_fraction=args.safeguard_fraction,
                                 output=str(Path(args.output) / f"n{devices}_{partition.replace(':', '')}"))
            try:
                report = run_audit(config, progress=not args.quiet)
            except UserInputError as exc:  # e.g. dirichlet:0.5 at N = 100: the other settings still run
                results.append({"devices": devices, "partition": partition, "refused": str(exc)})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
                continue
            write_reports(report, config.output)
            results.append({"devices": devices, "partition": partition, "report": f"{config.output}/report.html",
                            "samples_per_device": args.train_samples / devices,
                            "rows": [table_row(row) for row in report["rows"]],
                            "poisoning": report["poisoning"], "shared_forwards": report["shared_forwards"],
                            "wall_seconds": time.perf_counter() - start})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # each setting as soon as it is done
    print(json.dumps({"model": args.model, "train_samples": args.train_samples, "attacks": list(args.attacks),
                      "settings": results}, indent=1))


if __name__ == "__main__":
    main()
