"""Traffic of an `he_ckks` run against plain PAE, and its head against the plaintext ridge head (prints JSON).

Side by side on one training subset, through `run_finetune` (device and server in one
process, bytes counted on the in-process channel with the real message encoding):
1. plain PAE (`--mechanism none`), 2. `he_ckks`; then 3. the ridge head that run's server
would have fitted on plaintext Δ (same feature map, same upload split, same safeguard),
scored on the same dev set. Device forwards come from the device-side cache
(`reuse_forwards`), so only the first call pays for the backbone.

    python benchmarks/he_traffic.py --workdir runs/he            # 2,000-sample setting
    python benchmarks/he_traffic.py --workdir runs/he_smoke --model tiny-llama --train-samples 60  # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import tenseal.sealapi as seal
import torch

from protocol.device.forward_device import PivotBatch, prediction_difference, side_scores
from protocol.device.features import encode_dataset
from protocol.model.model_io import load_finetuned
from protocol.modes.ckks_ridge.head import RidgeHead
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data
from secure_assist.finetune import run_finetune
from secure_assist.mechanisms import PrivacyWarning
from protocol.modes.ckks_ridge.context import to_bytes
from protocol.modes.ckks_ridge.ridge import ridge_operator
from secure_assist.task_kinds import task_kind
from secure_assist.training.run import build_mechanisms, hold_out_indices

TRAFFIC_KEYS = ("accuracy", "zero_shot_accuracy", "n_train", "bytes_up", "bytes_down", "upload_bytes_per_sample")
HE_KEYS = ("he_public_context_bytes", "he_ciphertext_bytes_per_sample", "he_fit_reply_bytes",
           "he_fit_reply_ciphertexts", "he_server_fit_seconds", "he_device_decrypt_seconds",
           "he_device_encrypt_ms_per_sample", "safeguard")


def rows(pivots: PivotBatch, indices: np.ndarray) -> PivotBatch:
    """The forward outputs of some examples."""
    index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    return PivotBatch(activations=pivots.activations[index], label_logits=pivots.label_logits[index])


def plaintext_reference(config: FinetuneConfig, he_summary: dict[str, Any]) -> dict[str, Any]:
    """The HE run's head refitted on plaintext Δ: same feature map and split, same safeguard, same dev set."""
    task, train, evaluate = resolve_data(config)
    mechanisms = build_mechanisms(config)
    kind = task_kind(config)
    device = kind.make_device(config, task, mechanisms, progress=False)
    pivots, dev_pivots = encode_dataset(device, train), encode_dataset(device, evaluate)
    upload_idx, validation_idx = hold_out_indices(len(train), config)
    labels = torch.tensor([train[i].label for i in upload_idx])
    delta = prediction_difference(pivots.label_logits[upload_idx], labels).numpy().astype(np.float32)
    # What the server received: the payload dtype's rounding of the activations.
    uploaded = device.make_upload([train[i] for i in upload_idx], rows(pivots, upload_idx),
                                  np.zeros((len(upload_idx), 16), np.uint8)).activations
    deployed = load_finetuned(he_summary["model_file"]).side_network
    weights = ridge_operator(deployed.feature_map.apply(uploaded), config.he_ridge) @ delta
    head = RidgeHead(deployed.feature_map, weights)
    dev_labels = np.array([e.label for e in evaluate])

    def dev_accuracy(side: RidgeHead) -> float:
        return float((side_scores(dev_pivots, side)[1].argmax(1) == dev_labels).mean())

    result: dict[str, Any] = {"accuracy_unshrunk": dev_accuracy(head)}
    factor = he_summary["safeguard"]["factor"]
    if factor > 0:  # the model file holds the HE head after the safeguard's shrink
        he_head = RidgeHead(deployed.feature_map, deployed.weights / factor)
        result["he_head_accuracy_unshrunk"] = dev_accuracy(he_head)
        result["max_weight_error_vs_he_head"] = float(np.abs(he_head.weights - weights).max())
    result["safeguard"] = kind.safeguard(device, head, [train[i] for i in validation_idx], config.seed)
    result["accuracy"] = dev_accuracy(head)
    feature_map = deployed.feature_map
    result["feature_map_bytes"] = int(feature_map.mean.nbytes + feature_map.scale.nbytes
                                      + feature_map.components.nbytes)
    return result


def galois_key_bytes(poly_modulus_degree: int = 8192, bit_sizes: tuple[int, ...] = (60, 40, 40, 60)) -> int:
    """Bytes of one Galois (rotation) key with the two-level chain a rotate-and-sum packing needs:
    what the coefficient packing saves per rotation step (it needs none)."""
    parameters = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parameters.set_poly_modulus_degree(poly_modulus_degree)
    parameters.set_coeff_modulus(seal.CoeffModulus.Create(poly_modulus_degree, list(bit_sizes)))
    context = seal.SEALContext(parameters, True, seal.SEC_LEVEL_TYPE.TC128)
    keys = seal.GaloisKeys()
    seal.KeyGenerator(context).create_galois_keys([3], keys)  # one step: the rotation by one slot
    return len(to_bytes(keys))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="runs go to WORKDIR/plain and WORKDIR/he_ckks")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = FinetuneConfig(model=args.model, train_samples=args.train_samples, eval_samples=args.eval_samples,
                          seed=args.seed, mechanism_seed=args.seed, reuse_forwards=True)
    summaries = {}
    for name in ("none", "he_ckks"):
        config = replace(base, mechanism=(name,), workdir=str(Path(args.workdir) / ("plain" if name == "none" else name)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PrivacyWarning)
            summaries[name] = run_finetune(config, progress=False, overwrite=True).to_json()
    plain, he = summaries["none"], summaries["he_ckks"]
    he_config = replace(base, mechanism=("he_ckks",), workdir=str(Path(args.workdir) / "he_ckks"))
    reference = plaintext_reference(he_config, he)
    plain_bytes, he_bytes = plain["bytes_up"] + plain["bytes_down"], he["bytes_up"] + he["bytes_down"]
    out = {"setting": {"model": args.model, "train_samples": args.train_samples, "dev": he["n_eval"],
                       "seed": args.seed, "mechanism": he["mechanisms"][-1]},
           "plain_pae": {k: plain[k] for k in TRAFFIC_KEYS},
           "he_ckks": {**{k: he[k] for k in TRAFFIC_KEYS + HE_KEYS}, "galois_key_bytes": 0},
           "plaintext_ridge_head": reference,
           "bytes_ratio_he_to_plain": he_bytes / plain_bytes,
           "accuracy_difference_points": 100 * (he["accuracy"] - reference["accuracy"]),
           "one_galois_key_bytes_if_rotations_were_used": galois_key_bytes()}
    print(json.dumps(out, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
