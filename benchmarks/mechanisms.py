"""Utility and cost of the privacy mechanisms on SST-2 with SmolLM2-135M (prints JSON).

Every run goes through the one run path (`run_training`, device and server in this
process), and the device forward passes of all of them are computed once beforehand
(`secure_assist.training.forwards`):
- DP (`gaussian`, `label_rr`) at several ε and the `rotation_mask` row ("plain": exact,
  with the same hold-out as the DP rows), in the `side_network` mode: the run's safeguard
  on its own held-out validation split, then dev accuracy;
- `he_ckks` (the `ckks_ridge` mode): dev accuracy of the CKKS-fitted ridge head vs the
  same head fitted in plaintext (`he_traffic.plaintext_reference`: same feature map,
  split and safeguard), and the run's `he_*` costs at several training-set sizes.

What the run path decides, not this script: the device's validation split is the run
path's (`safeguard_fraction`, 20% of the training subset for every run, unprotected included
since the safeguard applies to every run; 20% for protected runs only, and 10% here, before), every row's training subset is the run's seed-fixed sample, the mechanisms
are seeded with `mechanism_seed` 0. `dev_accuracy_unshrunk` is the deployed side output
scaled back by 1/factor or, where the safeguard dropped it, the server's φ for mechanisms the
device does not undo (`gaussian`, `label_rr`); it is null for a dropped `rotation_mask` or CKKS
head (the device keeps nothing else), and so is `max_weight_error` (CKKS head vs plaintext
head) for a dropped CKKS head. Each `cost_growth` size (--he-sizes) is a real run on a
training subset of that many distinct samples, of which it uploads the 80% it does not hold
out (`samples`); it used to upload that many, tiling 2,000 cached samples.

    python benchmarks/mechanisms.py            # full (2,000 train samples, full dev set)
    python benchmarks/mechanisms.py --quick    # 64 train, 64 dev samples, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from he_traffic import plaintext_reference  # sibling script: python puts benchmarks/ on sys.path
from protocol.device.shared_forwards import serving
from protocol.model.model_io import load_finetuned
from protocol.model.side_network import network_from_arrays
from protocol.model.side_output import SideOutput, scale_side_output
from protocol.server.transcript import SIDE_NETWORK_FILE
from protocol.wire.codec import decode
from secure_assist.config import FinetuneConfig
from secure_assist.mechanisms import PrivacyWarning
from secure_assist.mechanisms.base import Mechanism
from secure_assist.task_kinds import task_kind
from secure_assist.task_kinds.classification import accuracy
from secure_assist.training.forwards import share_forwards
from secure_assist.training.run import build_mechanisms, run_training
from secure_assist.training.summary import RunSummary


def timed_run(config: FinetuneConfig) -> tuple[RunSummary, float]:
    """One in-process run through the run path and its wall time."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # the warning is the point of the weaker rows
        summary = run_training(config, progress=False, overwrite=True)
    return summary, time.perf_counter() - start


def raw_side_output(config: FinetuneConfig, summary: RunSummary) -> SideOutput | None:
    """The run's side output before the safeguard: the deployed one scaled back by 1/factor, or,
    when the safeguard dropped it, the server's φ if no mechanism changes it on the device
    (`gaussian`, `label_rr`); None otherwise (a dropped `rotation_mask` or CKKS head)."""
    factor = summary.safeguard["factor"] if summary.safeguard else 1.0
    if factor > 0:
        side = load_finetuned(summary.model_file).side_network
        scale_side_output(side, 1.0 / factor)
        return side
    path = Path(summary.server_view) / SIDE_NETWORK_FILE
    if path.is_file() and all(type(m).restore is Mechanism.restore for m in build_mechanisms(config).mechanisms):
        state, metadata = decode(path.read_bytes())
        return network_from_arrays(state, json.loads(metadata["architecture"])).eval()
    return None


def unshrunk_dev_accuracy(config: FinetuneConfig, summary: RunSummary) -> float | None:
    """Dev accuracy of `raw_side_output` (None where there is none), from the shared forwards."""
    side = raw_side_output(config, summary)
    if side is None:
        return None
    kind = task_kind(config)
    task, train, evaluate = kind.data(config)
    device = kind.make_device(config, task, None, progress=False, datasets=(train, evaluate))
    return accuracy(device.scores(evaluate, side)[1], np.array([e.label for e in evaluate]))


def safeguarded(safeguard: dict[str, Any], dev_accuracy: float, unshrunk: float | None) -> dict[str, Any]:
    """The dev accuracies and the safeguard's decision, under this benchmark's key names."""
    return {"dev_accuracy_unshrunk": unshrunk, "dev_accuracy": dev_accuracy,
            "shrink_factor": safeguard["factor"], "safeguard": safeguard["action"],
            "validation_accuracy_chosen": safeguard["validation_accuracy_chosen"],
            "validation_accuracy_backbone": safeguard["validation_accuracy_backbone"],
            "safeguard_p_value": safeguard["p_value"]}


def side_network_row(config: FinetuneConfig) -> tuple[dict[str, Any], RunSummary]:
    """One `side_network` run: its mechanisms, wall seconds and safeguarded dev accuracy."""
    summary, seconds = timed_run(config)
    row = {"mechanisms": summary.mechanisms, "seconds": seconds,
           **safeguarded(summary.safeguard, summary.metrics["accuracy"], unshrunk_dev_accuracy(config, summary))}
    return row, summary


def he_cost(summary: RunSummary) -> dict[str, Any]:
    """The CKKS mode's costs of one run, under this benchmark's key names."""
    details = summary.details
    return {"samples": summary.n_train, "device_encrypt_ms_per_sample": details["he_device_encrypt_ms_per_sample"],
            "ciphertext_bytes_per_sample": details["he_ciphertext_bytes_per_sample"],
            "public_context_bytes": details["he_public_context_bytes"],
            "server_fit_seconds": details["he_server_fit_seconds"],
            "device_decrypt_seconds": details["he_device_decrypt_seconds"],
            "upload_bytes_per_sample": summary.upload_bytes_per_sample,
            "fit_reply_bytes": details["he_fit_reply_bytes"], "fit_reply_ciphertexts": details["he_fit_reply_ciphertexts"],
            "n_features": details["he_features"]}


def he_part(config: FinetuneConfig, growth: list[FinetuneConfig]) -> tuple[dict[str, Any], RunSummary]:
    """The CKKS head against the plaintext ridge head, then the costs at each training-set size."""
    summary, _ = timed_run(config)
    reference = plaintext_reference(config, summary.to_json())
    result = {"accuracy_run": he_cost(summary), "max_weight_error": reference.get("max_weight_error_vs_he_head"),
              "he_ckks": safeguarded(summary.safeguard, summary.metrics["accuracy"],
                                     reference.get("he_head_accuracy_unshrunk")),
              "plaintext_ridge": safeguarded(reference["safeguard"], reference["accuracy"],
                                             reference["accuracy_unshrunk"]),
              "cost_growth": [he_cost(timed_run(point)[0]) for point in growth],
              "cost_growth_note": "each size is a run on that many distinct training samples"}
    return result, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 train, 64 dev samples, 2 epochs, 8 HE features")
    parser.add_argument("--part", choices=("all", "dp", "he"), default="all")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--he-sizes", default=None, help="comma-separated training-set sizes of the HE cost runs "
                                                         "(default 500,2000,8000; --quick: 32)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_train, n_dev = (64, 64) if args.quick else (2000, None)
    epochs = args.epochs or (2 if args.quick else 5)
    epsilons = (1.0, 8.0) if args.quick else (0.5, 1.0, 2.0, 4.0, 8.0)
    he_sizes = [int(v) for v in (args.he_sizes or ("32" if args.quick else "500,2000,8000")).split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        base = FinetuneConfig(train_samples=n_train, eval_samples=n_dev, epochs=epochs, mechanism_seed=0,
                              reuse_forwards=True, workdir=tmp)

        def config(name: str, mechanism: str, **values: Any) -> FinetuneConfig:
            return replace(base, mechanism=(mechanism,), workdir=str(Path(tmp) / name), **values)

        dp = {} if args.part == "he" else {
            "plain": config("plain", "rotation_mask", mode="side_network"),
            **{f"{name}_{eps}": config(f"{name}_{eps}", name, mode="side_network", epsilon=eps)
               for name in ("gaussian", "label_rr") for eps in epsilons}}
        he = None if args.part == "dp" else config("he_ckks", "he_ckks", he_features=8 if args.quick else 128)
        growth = [] if he is None else [replace(he, train_samples=n, workdir=str(Path(tmp) / f"he_{n}"))
                                        for n in he_sizes]
        tables = share_forwards([*dp.values(), *([he] if he else []), *growth], progress=False)
        out: dict[str, Any] = {}
        summaries: list[RunSummary] = []  # the setting is read from the first run
        with serving(tables):
            if dp:
                out["plain"], plain = side_network_row(dp["plain"])
                summaries.append(plain)
                out["dp"] = {name: {str(eps): side_network_row(dp[f"{name}_{eps}"])[0] for eps in epsilons}
                             for name in ("gaussian", "label_rr")}
            if he is not None:
                out["he"], he_summary = he_part(he, growth)
                summaries.append(he_summary)
    first = summaries[0]
    validation = first.safeguard["validation_samples"] if first.safeguard else 0
    setting = {"task": "sst2", "backbone": base.model, "train_subset": n_train, "uploaded": first.n_train,
               "device_validation": validation, "dev": first.n_eval, "epochs": epochs, "delta": base.dp_delta}
    print(json.dumps({"setting": setting, "zero_shot_dev_accuracy": first.metrics["zero_shot_accuracy"], **out},
                     indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
