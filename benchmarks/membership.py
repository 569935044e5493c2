"""Membership inference on deployed models: the audit's rows, a positive control, and the
attack's strength against the number of reference models. Prints JSON.

1. An audit with the `none` variant and the membership attacks (`zero_shot`, `device_local`
   and plain PAE rows) at the audit's default number of references; its `membership_seconds`
   is the wall time membership adds to the audit.
2. The same rows against `--references` reference models trained once, scored with their
   first 4, 16, ... (`--curve`): how TPR at 1% FPR moves with the number of references.
3. A positive control: an intentionally overfit side network (`--control-samples` samples,
   `--control-epochs` epochs, no weight decay, adapters at the full rate) trained on the
   device, attacked with `--control-references` references trained with its own recipe.

    python benchmarks/membership.py --output runs/membership            # SmolLM2-135M, 2,000 samples
    python benchmarks/membership.py --output runs/membership_smoke --model tiny-llama --train-samples 60 \\
        --eval-samples 16 --references 8 --curve 2,8 --control-references 4
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

from protocol.device.shared_forwards import serving  # noqa: E402
from protocol.model.model_io import load_finetuned  # noqa: E402
from secure_assist.audit.config import AuditConfig, device_local_config  # noqa: E402
from secure_assist.audit.membership import (  # noqa: E402
    membership_attacks, membership_setting, row_target, score_membership,
)
from secure_assist.audit.runner import attack_names, audit_inputs, run_audit  # noqa: E402
from secure_assist.training.forwards import share_forwards  # noqa: E402
from secure_assist.training.run import run_training  # noqa: E402
from secure_assist.training.workdir import MODEL_FILE  # noqa: E402

KEYS = ("auc", "auc_ci95", "tpr_at_0.01_fpr", "tpr_at_0.01_fpr_ci95", "tpr_at_0.001_fpr", "tpr_at_0.001_fpr_ci95")


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """A membership report without its ROC points."""
    return {**{k: v for k, v in report.items() if k != "attacks"},
            "attacks": {a["attack"]: {k: a[k] for k in KEYS} for a in report["attacks"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    parser.add_argument("--references", type=int, default=64)
    parser.add_argument("--curve", default="4,16,64", help="reference counts to score with")
    parser.add_argument("--control-samples", type=int, default=200)
    parser.add_argument("--control-epochs", type=int, default=100)
    parser.add_argument("--control-references", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    layers = None if args.layers is None else tuple(int(x) for x in args.layers.split(","))
    names = membership_attacks(sorted(attack_names(AuditConfig())))
    config = AuditConfig(model=args.model, train_samples=args.train_samples, eval_samples=args.eval_samples,
                         layers=layers, seed=args.seed, variants=("none",), attacks=tuple(names),
                         output=str(args.output / "audit"))
    report = run_audit(config, progress=False)
    rows = {r["variant"]: r for r in report["references"] + report["variants"]}
    result: dict[str, Any] = {
        "setting": {k: getattr(config, k) for k in ("model", "task", "train_samples", "eval_samples", "layers",
                                                    "epochs", "weight_decay", "membership_references", "seed")},
        "audit_wall_seconds": report["wall_seconds"], "membership_seconds": report["membership_seconds"],
        "rows": {name: {"accuracy": row["utility"]["accuracy"], "membership": summary(row["membership"])}
                 for name, row in rows.items() if "membership" in row}}

    # The same rows against more references, trained once.
    data, public, _ = audit_inputs(config)
    local = rows["device_local"]["workdir"]
    targets = [row_target("zero_shot", None, local), row_target("device_local", local, local),
               row_target("none", rows["none"]["workdir"], rows["none"]["workdir"])]
    reference_start = time.perf_counter()
    # The audit's backbone pass over its samples serves the attacker's passes over them, as in the audit.
    with serving(share_forwards([data.config], progress=False)):
        setting = membership_setting(data.config, data.task, data.train, public,
                                     load_finetuned(Path(local) / MODEL_FILE).layers, args.references, False)
    result["references_seconds"] = time.perf_counter() - reference_start
    curve: dict[str, dict[str, dict[int, float]]] = {t.row: {n: {} for n in names} for t in targets}
    for count in (int(x) for x in args.curve.split(",")):
        fewer = replace(setting, references=setting.references.first(count))
        for target in targets:
            for attack in score_membership(fewer, target, names, args.seed)["attacks"]:
                curve[target.row][attack["attack"]][count] = attack["tpr_at_0.01_fpr"]
    result["tpr_at_1pct_fpr_by_references"] = curve
    result["rows_at_most_references"] = {t.row: summary(score_membership(setting, t, names, args.seed))
                                         for t in targets}

    # The positive control: overfit on few samples, attacked with references of its own recipe.
    control_config = replace(config, train_samples=args.control_samples, epochs=args.control_epochs,
                             weight_decay=0.0, adapter_lr_scale=1.0, output=str(args.output / "control"))
    control_data = audit_inputs(control_config)[0]
    control_start = time.perf_counter()
    run_config = device_local_config(control_config)
    control_run = run_training(run_config, progress=False, overwrite=True)
    # Its samples are the first of the audit's (the same seed-fixed shuffle): the audit's public rows
    # and non-members are disjoint from them too.
    control_setting = membership_setting(control_data.config, control_data.task, control_data.train, public,
                                         load_finetuned(control_run.model_file).layers, args.control_references,
                                         False)
    control = score_membership(control_setting, row_target("positive_control", run_config.workdir,
                                                           run_config.workdir), names, args.seed)
    result["positive_control"] = {
        "setting": {"train_samples": args.control_samples, "epochs": args.control_epochs, "weight_decay": 0.0,
                    "adapter_lr_scale": 1.0, "references": args.control_references},
        "accuracy": control_run.metrics["accuracy"], "final_train_loss": control_run.final_train_loss,
        "membership": summary(control), "seconds": time.perf_counter() - control_start}
    result["wall_seconds"] = time.perf_counter() - start
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
