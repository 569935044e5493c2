"""Can a pool member's safeguard tell that the pool's φ beats its backbone? Deploy rate against validation size.

One pooled run (`run_pooled`, plain, every device of an N-device split of the training subset uploading its share,
forwards from the device cache) trains the pool's φ; the side output one device receives is copied just before its
safeguard shrinks it (`safeguard_power.raw_side_outputs`). Its backbone and raw scores on the common evaluation
split (never trained on) give its true gain; then, for each validation size v, `--trials` seed-fixed draws of v
evaluation samples are handed to the safeguard's own test (`choose_shrink`), and the share of draws in which it
deploys φ (factor > 0) is the test's power at v for this φ. A device of the pool holds out
`safeguard.validation_count` of its samples (10 for 20-sample devices, 20 for 100-sample ones).

    OMP_NUM_THREADS=2 python benchmarks/pooled_safeguard_power.py --devices 20 --output runs/pooled_safeguard_power

Prints one JSON object: the φ's and the backbone's accuracy on the whole evaluation split and the deploy rate
per validation size, with a 95% Clopper-Pearson interval.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from dataclasses import replace
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

from secure_assist.config import FinetuneConfig  # noqa: E402
from secure_assist.devices.pooled_run import run_pooled  # noqa: E402
from secure_assist.task_kinds import task_kind  # noqa: E402
from secure_assist.training.safeguard import choose_shrink  # noqa: E402

# The sibling benchmark's recorder of side outputs before the safeguard shrinks them (an installed package named
# `benchmarks` shadows this folder, so it is loaded by path).
raw_side_outputs = runpy.run_path(str(Path(__file__).with_name("safeguard_power.py")))["raw_side_outputs"]


def deploy_rate(backbone: np.ndarray, side: np.ndarray, labels: np.ndarray, size: int, trials: int,
                seed: int) -> dict[str, object]:
    """Share of `trials` draws of `size` samples on which the safeguard deploys the side output, with its CI."""
    rng = np.random.default_rng(seed)
    deployed = 0
    for trial in range(trials):
        drawn = rng.choice(len(labels), size, replace=False)
        deployed += choose_shrink(backbone[drawn], side[drawn], labels[drawn], seed=trial).factor > 0
    interval = binomtest(deployed, trials).proportion_ci(0.95)
    return {"validation_samples": size, "deploy_rate": deployed / trials,
            "ci95": [float(interval.low), float(interval.high)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--device-index", type=int, default=0, help="the member whose received φ is tested")
    parser.add_argument("--sizes", default="10,20,30,50,80,100,150,200", help="validation sizes to test")
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/pooled_safeguard_power")
    args = parser.parse_args()
    base = FinetuneConfig(model=args.model, train_samples=args.train_samples, devices=args.devices,
                          partition=args.partition, seed=args.seed, reuse_forwards=True)
    configs = [replace(base, device_index=i, mechanism_seed=args.seed + i,
                       workdir=str(Path(args.output) / f"device_{i:03d}")) for i in range(args.devices)]
    with raw_side_outputs() as recorded:
        run_pooled(configs, progress=True, overwrite=True)
    device, side, validation = recorded[args.device_index]
    _, _, evaluate = task_kind(configs[0]).data(configs[0])
    backbone, combined = device.scores(evaluate, side)
    labels = np.array([e.label for e in evaluate])
    sizes = [int(s) for s in args.sizes.split(",")]
    print(json.dumps({
        "devices": args.devices, "partition": args.partition, "member": args.device_index,
        "member_validation_samples": len(validation),
        "evaluation_samples": len(labels),
        "backbone_accuracy": float((backbone.argmax(axis=1) == labels).mean()),
        "pool_phi_accuracy": float((combined.argmax(axis=1) == labels).mean()),
        "power": [deploy_rate(backbone, combined - backbone, labels, size, args.trials, args.seed)
                  for size in sizes if size <= len(labels)],
    }, indent=1))


if __name__ == "__main__":
    main()
