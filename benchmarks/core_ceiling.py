"""How far can a read-out of what PAE uploads go? Linear probes tuned on the dev set itself.

The server sees one pivot state per layer and Δ per sample. This fits, on the same
2,000-sample training subset and the full dev set as `core_pae.py`:
  ridge     Δ ≈ ridge(A) on the standardized all-layer pivot states, predicting
            argmax(p_b + ridge(A)) exactly as the side network is used;
  logistic  y from the standardized pivot states plus z_b (cross-entropy).
Each is swept over its regularization and the best dev accuracy is kept: choosing on the
evaluation set makes this an optimistic bound for these read-outs, not a fair score.
With `--lora-json` (a `core_pae.py` phase file) it prints LoRA − 1.5 beside the bound.
Device forwards come from the device-side feature cache (`protocol.device.features`).

    python benchmarks/core_ceiling.py --lora-json runs/core/lora.json
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from core_pae import add_run_arguments  # sibling script: python puts benchmarks/ on sys.path

RIDGE_ALPHAS = (1e3, 3e3, 1e4, 3e4, 1e5)
LOGISTIC_CS = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)


def main() -> None:
    from protocol.model.backbone import load_backbone
    from protocol.device.forward_device import DeviceRole
    from protocol.device.features import encode_dataset
    from protocol.data.tasks import SST2, builtin_split, sample

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, with_epochs=False)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-json", type=Path, default=None, help="a core_pae.py lora.json to compare with")
    args = parser.parse_args()
    if args.lora_json is not None and not args.lora_json.is_file():
        parser.error(f"--lora-json {args.lora_json}: no such file (a core_pae.py workdir holds lora.json)")

    device = DeviceRole(load_backbone(args.model), SST2, progress=True)
    train = sample(builtin_split("sst2", "train"), args.train_samples, args.seed)
    dev = builtin_split("sst2", "dev")
    dev = sample(dev, args.eval_samples, args.seed + 1) if args.eval_samples else dev
    fitted, held = encode_dataset(device, train), encode_dataset(device, dev)
    y_train, y_dev = np.array([e.label for e in train]), np.array([e.label for e in dev])
    states = fitted.activations.flatten(1).numpy()
    scaler = StandardScaler().fit(states)
    x_train, x_dev = scaler.transform(states), scaler.transform(held.activations.flatten(1).numpy())
    p_train = torch.softmax(fitted.label_logits, -1).numpy()
    p_dev = torch.softmax(held.label_logits, -1).numpy()
    delta = np.eye(p_train.shape[1])[y_train] - p_train

    ridge = {}
    for alpha in tqdm(RIDGE_ALPHAS, desc="ridge", unit="alpha"):
        side = Ridge(alpha=alpha).fit(x_train, delta).predict(x_dev)
        ridge[alpha] = float(((p_dev + side).argmax(1) == y_dev).mean())
    logistic = {}
    with_logits_train = np.hstack([x_train, fitted.label_logits.numpy()])
    with_logits_dev = np.hstack([x_dev, held.label_logits.numpy()])
    for c in tqdm(LOGISTIC_CS, desc="logistic", unit="C"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=c, max_iter=3000).fit(with_logits_train, y_train)
        logistic[c] = float(model.score(with_logits_dev, y_dev))

    best = max([*ridge.values(), *logistic.values()])
    result = {
        "n_train": len(train), "n_eval": len(dev), "zero_shot_accuracy": float((p_dev.argmax(1) == y_dev).mean()),
        "ridge_delta_by_alpha": ridge, "logistic_by_c": logistic, "best_dev_tuned_accuracy": best,
    }
    if args.lora_json is not None:
        lora = json.loads(args.lora_json.read_text())["accuracy"]
        result.update({"lora_accuracy": lora, "target_accuracy_lora_minus_1_5_points": lora - 0.015,
                       "bound_minus_lora_points": 100 * (best - lora)})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
