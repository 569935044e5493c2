"""The safeguard's power on real side outputs: over several seeds, is a side output that truly beats the
backbone deployed?

For each seed (it fixes the training subset, the 20% hold-out the safeguard tests on, and the side network) and
each mechanism, one real `run_finetune` at the default recipe (SST-2, 2,000 samples, full dev set, forwards from
the device cache). The side output is copied just before the safeguard shrinks it, so its *raw* dev accuracy
(what it would score deployed unshrunk) is measured beside the deployed accuracy and the safeguard's decision.
The target (the audit's acceptance criterion): every side output whose raw dev accuracy beats zero-shot by >= 2 points is deployed in at
least 4 of 5 seeds.

    OMP_NUM_THREADS=1 python benchmarks/safeguard_power.py --mechanisms none,label_rr@4,gaussian@8 --seeds 0,1,2,3,4 \\
        --workdir runs/safeguard_power

Resumable: each finished run is kept as <workdir>/<mechanism>-<seed>.json, with the backbone's and the raw side
output's scores on its validation split and on dev in <mechanism>-<seed>.npz. The decision reported is the one this
checkout's safeguard makes on those recorded validation scores (the run's own is kept beside it), so a changed
safeguard is measured on the same side outputs without training them again. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

GAIN_POINTS = 2.0  # a side output that "beats zero-shot by >= 2 points" must be deployed


@contextmanager
def raw_side_outputs() -> Iterator[list]:
    """Record (device, side output) of every run just before the safeguard shrinks the side output in
    place: the run itself keeps only the shrunk one, and its raw accuracy is what this benchmark asks about."""
    from secure_assist.task_kinds.classification import ClassificationKind

    recorded: list = []
    original = ClassificationKind.safeguard

    def recording(self, device, side, validation, seed=0):
        recorded.append((device, copy.deepcopy(side), validation))
        return original(self, device, side, validation, seed)

    ClassificationKind.safeguard = recording
    try:
        yield recorded
    finally:
        ClassificationKind.safeguard = original


def one_run(args: argparse.Namespace, spec: str, seed: int) -> dict:
    """Deployed and raw dev accuracy of one (mechanism, seed), with the safeguard's decision."""
    from secure_assist.config import FinetuneConfig
    from secure_assist.finetune import run_finetune
    from secure_assist.task_kinds import task_kind

    name, _, epsilon = spec.partition("@")
    config = FinetuneConfig(model=args.model, train_samples=args.train_samples, seed=seed, mechanism=(name,),
                            epsilon=float(epsilon) if epsilon else None, mechanism_seed=seed,
                            safeguard_fraction=args.safeguard_fraction, reuse_forwards=True, workdir=str(Path(args.workdir) / f"{spec}-{seed}"))
    with raw_side_outputs() as recorded:
        summary = run_finetune(config, progress=False, overwrite=True)
    device, raw, validation = recorded[-1]
    _, _, evaluate = task_kind(config).data(config)
    arrays = {}
    for split, examples in (("validation", validation), ("dev", evaluate)):
        backbone, combined = device.scores(examples, raw)
        arrays.update({f"{split}_backbone": backbone, f"{split}_side": combined - backbone,
                       f"{split}_labels": np.array([e.label for e in examples])})
    np.savez(Path(args.workdir) / f"{spec}-{seed}.npz", **arrays)
    return {"mechanism": spec, "seed": seed, "zero_shot_accuracy": summary.metrics["zero_shot_accuracy"],
            "raw_accuracy": _accuracy(arrays, "dev", 1.0), "deployed_accuracy": summary.metrics["accuracy"],
            "safeguard": summary.safeguard}


def _accuracy(arrays: dict[str, np.ndarray], split: str, factor: float) -> float:
    """Accuracy of argmax(p_b + factor·g) on a recorded split."""
    predicted = (arrays[f"{split}_backbone"] + factor * arrays[f"{split}_side"]).argmax(axis=1)
    return float((predicted == arrays[f"{split}_labels"]).mean())


def decided(run: dict, workdir: Path) -> dict:
    """The run with the safeguard's decision as this checkout's `choose_shrink` makes it on the recorded validation
    outputs, and the dev accuracy it then deploys (the side output scales linearly: argmax(p_b + s·g)). Equal to
    the run's own decision when the safeguard has not changed since the run; the run's own is kept beside it."""
    from dataclasses import asdict

    from secure_assist.training.safeguard import choose_shrink

    with np.load(workdir / f"{run['mechanism']}-{run['seed']}.npz", allow_pickle=False) as loaded:
        arrays = dict(loaded)
    decision = choose_shrink(arrays["validation_backbone"], arrays["validation_side"], arrays["validation_labels"],
                             run["seed"])
    return {**run, "run_safeguard": run["safeguard"], "run_deployed_accuracy": run["deployed_accuracy"],
            "safeguard": {**asdict(decision), "action": decision.action},
            "deployed_accuracy": _accuracy(arrays, "dev", decision.factor)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--mechanisms", default="none,label_rr@4,gaussian@8")
    # Every run's default share (safeguard.VALIDATION_SHARE), plain PAE included.
    parser.add_argument("--safeguard-fraction", type=float, default=0.2)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    from protocol.files import write_atomic

    runs = []
    for spec in args.mechanisms.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            path = Path(args.workdir) / f"{spec}-{seed}.json"
            if not path.is_file():
                write_atomic(path, json.dumps(one_run(args, spec, seed)).encode())
            runs.append(decided(json.loads(path.read_text()), Path(args.workdir)))
            print(json.dumps(runs[-1]), flush=True)
    qualifying = [r for r in runs if 100 * (r["raw_accuracy"] - r["zero_shot_accuracy"]) >= GAIN_POINTS]
    deployed = [r for r in qualifying if r["safeguard"]["action"] != "dropped"]
    print(json.dumps({"runs": runs, "qualifying_runs": len(qualifying), "qualifying_deployed": len(deployed),
                      "per_mechanism": {spec: {"qualifying": sum(r["mechanism"] == spec for r in qualifying),
                                               "deployed": sum(r["mechanism"] == spec for r in deployed)}
                                        for spec in args.mechanisms.split(",")}}, indent=2))


if __name__ == "__main__":
    main()
