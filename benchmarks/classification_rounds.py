"""Boosting rounds for classification: does refreshing Δ at the corrected prediction lift PAE on SST-2?

PAE trains its side network once, on Δ = onehot(y) − p_b. With rounds, the device would deploy round
k−1's sum S_{k−1} (every earlier side output at the factor its safeguard chose), recompute
Δ_k = onehot(y) − (p_b + S_{k−1}(A)) on the states it already holds (no backbone pass) and upload it;
the server trains a new side network on Δ_k with PAE's recipe (`train_side_network`: the server's
settings, arrival steps of the device's batch size, then cached epochs), and the device's safeguard
(`choose_shrink`, with p_b + S_{k−1} as the model to beat) scales it on the validation split. Run here
offline on the device-side forward cache (the same passes as a `finetune --reuse-forwards` run), so a
round costs only the side network's training. Accuracy on the evaluation split is reported after each
round of --rounds, with the paired 95% interval of the gain over round 1. Prints one JSON object:
  OMP_NUM_THREADS=2 python benchmarks/classification_rounds.py --train-samples 2000 --rounds 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

# Run as a script, this file's folder comes first on sys.path and its names would shadow packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from attacks.membership_references import LabeledFeatures, TrainingRecipe, train_side_network  # noqa: E402
from protocol.device.features import encode_dataset  # noqa: E402
from secure_assist.config import FinetuneConfig  # noqa: E402
from secure_assist.metrics import accuracy_with_interval, paired_difference  # noqa: E402
from secure_assist.task_kinds import task_kind  # noqa: E402
from secure_assist.training.run import hold_out_indices  # noqa: E402
from secure_assist.training.safeguard import choose_shrink  # noqa: E402


def labeled(device: object, examples: list) -> LabeledFeatures:
    """The device's forward outputs of `examples` (from its cache) with their labels."""
    batch = encode_dataset(device, examples)
    return LabeledFeatures(batch.activations.numpy(), batch.label_logits.numpy(),
                           np.array([e.label for e in examples]))


def side_values(network: torch.nn.Module, features: LabeledFeatures) -> np.ndarray:
    """g(A) of every row."""
    network.eval()
    with torch.inference_mode():
        return network(torch.from_numpy(features.activations).float()).numpy()


def boosted_rounds(splits: dict[str, LabeledFeatures], recipe: TrainingRecipe, rounds: list[int],
                   seed: int) -> list[dict]:
    """One record per round of `rounds`: the deployed sum's accuracy on 'eval' and the round's decision.
    A round whose factor is 0 leaves the sum as it was, so every later round would repeat it: the rounds stop
    there ('dropped_at_round')."""
    backbone = {key: part.backbone_probabilities().numpy() for key, part in splits.items()}
    total = {key: np.zeros_like(value) for key, value in backbone.items()}
    onehot = np.eye(backbone["upload"].shape[1], dtype=np.float32)[splits["upload"].labels]
    labels = splits["eval"].labels
    results, first, stopped_at = [], None, None
    for number in range(1, max(rounds) + 1):
        if stopped_at is None:
            started = time.perf_counter()
            targets = torch.from_numpy(onehot - (backbone["upload"] + total["upload"]))
            network = train_side_network(splits["upload"], recipe, seed, targets=targets)
            outputs = {key: side_values(network, part) for key, part in splits.items()}
            decision = choose_shrink(backbone["validation"] + total["validation"], outputs["validation"],
                                     splits["validation"].labels, seed)
            # What the evaluation split would say of this round added whole, whatever the safeguard decided.
            unscaled = float(((backbone["eval"] + total["eval"] + outputs["eval"]).argmax(1) == labels).mean())
            for key in total:
                total[key] = total[key] + decision.factor * outputs[key]
            stopped_at = number if decision.factor == 0 else None
            record = {"validation": decision.to_json(), "eval_accuracy_if_added_unscaled": unscaled,
                      "server_seconds": time.perf_counter() - started}
        if number in rounds:
            predictions = (backbone["eval"] + total["eval"]).argmax(1)
            first = predictions == labels if first is None else first
            results.append({"round": number, "dropped_at_round": stopped_at, **record,
                            "accuracy": accuracy_with_interval(predictions, labels, seed),
                            "gain_over_first_scored_round": paired_difference(predictions == labels, first, seed)})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=None, help="default: the full 872-sample dev set")
    parser.add_argument("--epochs", type=int, default=FinetuneConfig.epochs)
    parser.add_argument("--rounds", default="1,2,4,8", help="after which rounds the evaluation is scored")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        rounds = sorted({int(r) for r in args.rounds.split(",")})
    except ValueError:
        parser.error(f"--rounds {args.rounds!r}: give round numbers, e.g. 1,2,4")
    if rounds[0] < 1:
        parser.error("--rounds: rounds are numbered from 1")

    config = FinetuneConfig(model=args.model, train_samples=args.train_samples, eval_samples=args.eval_samples,
                            epochs=args.epochs, seed=args.seed, reuse_forwards=True)
    kind = task_kind(config)
    task, train, evaluate = kind.data(config)
    # The pools of a `finetune --reuse-forwards` run: its forward passes come from the same cache entries.
    device = kind.make_device(config, task, None, True, (train, evaluate))
    upload, validation = hold_out_indices(len(train), config)
    splits = {"upload": labeled(device, [train[i] for i in upload]),
              "validation": labeled(device, [train[i] for i in validation]), "eval": labeled(device, evaluate)}
    recipe = TrainingRecipe(config.server_training(), config.epochs, config.device_batch_size)
    zero_shot = splits["eval"].backbone_probabilities().numpy().argmax(1)
    print(json.dumps({"settings": vars(args), "uploaded": len(upload), "validation": len(validation),
                      "eval": len(evaluate),
                      "zero_shot_accuracy": accuracy_with_interval(zero_shot, splits["eval"].labels, args.seed),
                      "rounds": boosted_rounds(splits, recipe, rounds, args.seed)}, indent=2))


if __name__ == "__main__":
    main()
