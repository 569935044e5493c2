"""The safeguard on small devices: does any device deploy a side output worse than its backbone, and which
validation share keeps the gain when there is one?

Each repetition is one device of a many-device run: the 2,000-sample SST-2 training subset split iid over
2000/size devices (`devices`, `partition`, `device_index`), device `index` holding `size` samples, trained
`device_local` on SmolLM2-135M (forwards from the device cache, keyed by the whole training subset: the first run
computes the 2,000 + 872 once for every device).
Every device is run once per arm: without the safeguard (`safeguard_fraction` 0: all its samples train, the side
output deploys as trained) and with each (share, floor) arm, the floor being the fewest validation samples held out
(`safeguard.MIN_VALIDATION`, never more than half the device's samples). Arms that hold out the same number of
samples of a device are one run. Recorded per run: the zero-shot dev accuracy, the raw side output's (as trained)
and the deployed one's (after the safeguard), and the safeguard's decision. One strong case closes the table: the
whole 2,000-sample subset on one device at the default share, which should still deploy.

    OMP_NUM_THREADS=2 python benchmarks/small_device_safeguard.py --sizes 20,50,100 --indices 0-9 \\
        --arms 0.2:10,0.2:1,0.5:1,0.3:1 --workdir runs/small_device_safeguard

Resumable: each finished run is kept as <workdir>/<size>-<index>-v<validation samples>.json. Prints one JSON
object per run, then the table (one row per size and arm, `none` the arm without safeguard).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import runpy
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import numpy as np

from protocol.files import write_atomic
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data
from secure_assist.finetune import run_finetune
from secure_assist.task_kinds import task_kind
from secure_assist.training import safeguard
from secure_assist.training.safeguard import validation_count

NO_SAFEGUARD = "none"
# The sibling benchmark's recorder of side outputs before the safeguard shrinks them (an installed package named
# `benchmarks` shadows this folder, so it is loaded by path).
raw_side_outputs = runpy.run_path(str(Path(__file__).with_name("safeguard_power.py")))["raw_side_outputs"]


def arm_name(share: float, floor: int) -> str:
    """The table's name of an arm."""
    return NO_SAFEGUARD if share == 0 else f"share {share}, floor {floor}"


@contextmanager
def one_forward_cache_entry(config: FinetuneConfig) -> Iterator[None]:
    """Key every device's forward cache by the whole training subset rather than by its own share (the run path's
    pool): the same forwards, computed once for all the devices of a size (and shared by the one-device run)."""
    from secure_assist.task_kinds.classification import ClassificationKind

    original = ClassificationKind.make_device
    _, whole, evaluate = resolve_data(replace(config, devices=1, device_index=0))

    def make_device(self, config, task, mechanisms, progress, datasets=()):
        return original(self, config, task, mechanisms, progress, (whole, evaluate))

    ClassificationKind.make_device = make_device
    try:
        yield
    finally:
        ClassificationKind.make_device = original


def one_run(args: argparse.Namespace, size: int, index: int, share: float, floor: int) -> dict:
    """Zero-shot, raw and deployed dev accuracy of one device at one arm, with the safeguard's decision."""
    saved, safeguard.MIN_VALIDATION = safeguard.MIN_VALIDATION, floor  # the arm's floor, for this run only
    try:
        config = FinetuneConfig(model=args.model, train_samples=args.train_samples, devices=args.train_samples // size,
                                device_index=index, mode="device_local", seed=args.seed, safeguard_fraction=share,
                                reuse_forwards=True, workdir=str(Path(args.workdir) / "run"))
        with raw_side_outputs() as recorded, one_forward_cache_entry(config):
            summary = run_finetune(config, progress=False, overwrite=True)
    finally:
        safeguard.MIN_VALIDATION = saved
    metrics = summary.metrics
    raw = metrics["accuracy"]
    if recorded:  # the safeguard ran: score the side output as trained, before it shrank it
        device, side, _ = recorded[-1]
        _, _, evaluate = task_kind(config).data(config)
        backbone, combined = device.scores(evaluate, side)
        raw = float((combined.argmax(axis=1) == np.array([e.label for e in evaluate])).mean())
    return {"size": size, "index": index, "trained_on": summary.n_train, "zero_shot_accuracy":
            metrics["zero_shot_accuracy"], "raw_accuracy": raw, "deployed_accuracy": metrics["accuracy"],
            "safeguard": summary.safeguard}


def cached_run(args: argparse.Namespace, size: int, index: int, share: float, floor: int) -> dict:
    """`one_run`, read back when a run of this device holding out as many samples is already recorded."""
    saved, safeguard.MIN_VALIDATION = safeguard.MIN_VALIDATION, floor
    try:
        held_out = validation_count(size, share)
    finally:
        safeguard.MIN_VALIDATION = saved
    path = Path(args.workdir) / f"{size}-{index}-v{held_out}{'' if share else '-off'}.json"
    if not path.is_file():
        write_atomic(path, json.dumps(one_run(args, size, index, share, floor)).encode())
    return json.loads(path.read_text())


def table_row(size: int, arm: str, runs: list[dict]) -> dict:
    """What the arm deploys over a size's devices, against zero-shot."""
    deployed = np.array([r["deployed_accuracy"] for r in runs])
    zero_shot = np.array([r["zero_shot_accuracy"] for r in runs])
    actions = [r["safeguard"]["action"] if r["safeguard"] else "as trained" for r in runs]
    return {"size": size, "arm": arm, "devices": len(runs),
            "validation_samples": sorted({r["safeguard"]["validation_samples"] if r["safeguard"] else 0 for r in runs}),
            "zero_shot_accuracy": float(zero_shot.mean()),
            "raw_accuracy_mean": float(np.mean([r["raw_accuracy"] for r in runs])),
            "deployed_accuracy_mean": float(deployed.mean()), "deployed_accuracy_min": float(deployed.min()),
            "actions": {a: actions.count(a) for a in sorted(set(actions))},
            "deployed_worse_than_zero_shot": int((deployed < zero_shot - 1e-9).sum()),
            "raw_better_than_zero_shot": int(sum(r["raw_accuracy"] > r["zero_shot_accuracy"] for r in runs))}


def indices(spec: str) -> list[int]:
    """'0-9' or '0,3,5'."""
    first, _, last = spec.partition("-")
    return list(range(int(first), int(last) + 1)) if last else [int(i) for i in spec.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--sizes", default="20,50,100", help="training samples per device")
    parser.add_argument("--indices", default="0-9", help="device indices run at each size (repetitions)")
    parser.add_argument("--arms", default="0.2:10,0.2:1,0.5:1,0.3:1", help="share:floor of each safeguard arm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-strong", action="store_true", help="leave out the one-device 2,000-sample run")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    # The safeguarded arms first, the arm without safeguard last.
    arms = [(float(a.split(":")[0]), int(a.split(":")[1])) for a in args.arms.split(",")] + [
        (0.0, safeguard.MIN_VALIDATION)]
    sizes = [int(s) for s in args.sizes.split(",")]
    runs: dict[tuple[int, str], list[dict]] = {}
    for share, floor in arms:  # arm by arm, in the given order: an interrupted study has its first arms whole
        for size in sizes:
            for index in indices(args.indices):
                runs.setdefault((size, arm_name(share, floor)), []).append(cached_run(args, size, index, share, floor))
                print(json.dumps({"arm": arm_name(share, floor), **runs[size, arm_name(share, floor)][-1]}), flush=True)
    table = [table_row(size, arm, runs[size, arm]) for size in sizes for arm in dict.fromkeys(a for _, a in runs)]
    if not args.skip_strong:
        strong = cached_run(args, args.train_samples, 0, safeguard.VALIDATION_SHARE, safeguard.MIN_VALIDATION)
        table.append(table_row(args.train_samples, arm_name(safeguard.VALIDATION_SHARE, safeguard.MIN_VALIDATION),
                               [strong]))
    print(json.dumps({"table": table}, indent=2))


if __name__ == "__main__":
    main()
