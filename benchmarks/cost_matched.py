"""Cost-matched PAE vs local LoRA: dev accuracy against device seconds and upload bytes per sample, and PAE's
leakage.

Each PAE point is one run through the one run path (`run_training`: device and server in this process, the
server's own training recipe, φ fetched, safeguarded and evaluated on the device) on a seed-fixed SST-2 training
subset of each size in --sizes; local LoRA (`run_local_lora`, peft, 1 epoch, on the device) trains on the same
subset. The device forward passes of every run are computed once beforehand (`secure_assist.training.forwards`).
Leakage (at the smallest size: what one upload reveals does not depend on how many there are; --no-leakage skips
it): the activations-only label probe (`model_completion_k128`, balanced accuracy), the zero-shot head, and input
inversion (`learned_inversion`, and `candidate_matching` against the uploads' texts and 1,000 public ones) on a
seed-fixed subsample of the uploads, run through the auditor on the run's server view with the audit's public
knowledge.

The run path uploads the pivot's states only, so every point has `positions` 1: the points with the last k > 1
prompt positions uploaded (BENCHMARKS.md, "Cost-matched") were measured with a hand-built upload at the commits
named there; reproduce them there. What else the run path decides: `server_seconds` is the server's compute time of
the run (it was the wall time from the first upload to the fetched φ), the candidate pool of `candidate_matching`
holds every upload's text (it held the attacked subsample's), and PAE's `device_seconds` are the forward passes
over the training subset at the shared table's mean seconds per forward (train and dev texts together; they were
timed over the training texts alone). LoRA's are its training (forward + backward), measured beside it.

    OMP_NUM_THREADS=1 python benchmarks/cost_matched.py --sizes 2000,8000 --workdir runs/cost_matched
    OMP_NUM_THREADS=1 python benchmarks/cost_matched.py --quick     # 48 samples, 64 dev, 2 epochs

Resumable: every finished point is kept as <workdir>/points/<name>.json (default workdir: a new temporary
folder); prints one JSON object and writes <workdir>/cost_matched.png (accuracy vs device seconds and vs upload
bytes per sample).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

# benchmarks/attacks.py would shadow the `attacks` package this script runs; it needs no sibling script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

if TYPE_CHECKING:
    from protocol.device.shared_forwards import SharedForwards
    from secure_assist.config import FinetuneConfig

ATTACKS = ("public_head_zero_shot", "model_completion_k128", "learned_inversion", "candidate_matching")
# Attacks that reconstruct inputs run on a subsample of the uploads.
INVERSIONS = ("learned_inversion", "candidate_matching")
ATTACK_KEYS = ("balanced_accuracy", "balanced_accuracy_ci95", "token_f1", "token_f1_ci95", "exact_match", "n")


def run_point(args: argparse.Namespace, config: FinetuneConfig, table: SharedForwards, leakage: bool) -> dict[str, Any]:
    """One PAE run on `config`'s training subset: utility, cost and (optionally) leakage."""
    from secure_assist.training.run import run_training

    summary = run_training(config, progress=False, overwrite=True)
    point = {"kind": "pae", "train_samples": summary.n_train, "positions": 1,
             "accuracy": summary.metrics["accuracy"], "zero_shot_accuracy": summary.metrics["zero_shot_accuracy"],
             "upload_bytes_per_sample": summary.upload_bytes_per_sample,
             "device_seconds": table.seconds_per_forward * summary.n_train, "server_seconds": summary.server_seconds}
    if leakage:
        point["attacks"] = leakage_of(args, config)
    return point


def leakage_of(args: argparse.Namespace, config: FinetuneConfig) -> dict[str, Any]:
    """The attacks of ATTACKS on one run's server view (inversions on a subsample of the uploads)."""
    from secure_assist.audit.auditor import load_ground_truth, run_attack, upload_texts
    from secure_assist.audit.public_knowledge import knowledge, public_data
    from secure_assist.audit.sampling import sample_ids
    from secure_assist.data import resolve_data

    workdir = Path(config.workdir)
    task, train, evaluate = resolve_data(config)
    uploads = upload_texts(load_ground_truth(workdir))
    public = knowledge(config.model, task, public_data(task, None, None, train + evaluate, config.seed), uploads,
                       config.seed, progress=False, private_pool=[e.text for e in train])
    keep = sample_ids([sid for sid, _ in uploads], args.attack_samples, config.seed)
    out = {}
    for name in ATTACKS:
        report = run_attack(name, workdir, public=public, backbone_name=config.model, task=task, seed=config.seed,
                            progress=False, keep=keep if name in INVERSIONS else None)
        out[name] = {key: report[key] for key in ATTACK_KEYS if key in report}
    return out


def run_lora(config: FinetuneConfig) -> dict[str, Any]:
    """Local LoRA on the device, on `config`'s training subset, scored on its evaluation split."""
    from protocol.model.backbone import load_backbone
    from secure_assist.data import resolve_data
    from secure_assist.references.local_lora import LoraSettings, run_local_lora
    from secure_assist.task_kinds.classification import accuracy
    from secure_assist.training.resources import PeakMemory

    task, train, evaluate = resolve_data(config)
    with PeakMemory() as memory:
        run = run_local_lora(load_backbone(config.model), task, train, evaluate, LoraSettings(seed=config.seed),
                             progress=False)
    return {"kind": "lora", "train_samples": len(train),
            "accuracy": accuracy(run.probabilities, np.array([e.label for e in evaluate])),
            "device_seconds": run.train_seconds, "upload_bytes_per_sample": 0.0, "peak_rss_mib": memory.peak_mib}


def plot(points: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for n, color in zip(sorted({p["train_samples"] for p in points}), ("tab:blue", "tab:orange", "tab:green")):
        pae = sorted((p for p in points if p["kind"] == "pae" and p["train_samples"] == n), key=lambda p: p["positions"])
        lora = [p for p in points if p["kind"] == "lora" and p["train_samples"] == n]
        for axis, key in ((left, "device_seconds"), (right, "upload_bytes_per_sample")):
            axis.plot([p[key] for p in pae], [p["accuracy"] for p in pae], "o-", color=color, label=f"PAE n={n}")
            for p in pae:
                axis.annotate(f"k={p['positions']}", (p[key], p["accuracy"]), fontsize=7)
            if lora and key == "device_seconds":
                axis.plot([p[key] for p in lora], [p["accuracy"] for p in lora], "*", ms=12, color=color,
                          label=f"local LoRA n={n}")
            elif lora:
                axis.axhline(lora[0]["accuracy"], color=color, ls="--", label=f"local LoRA n={n} (uploads nothing)")
    left.set_xlabel(f"device seconds ({torch.get_num_threads()} CPU thread(s))")
    right.set_xlabel("upload bytes per sample")
    right.set_xscale("log")
    for axis in (left, right):
        axis.set_ylabel("dev accuracy")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    from protocol.device.shared_forwards import serving
    from secure_assist.config import FinetuneConfig
    from secure_assist.training.forwards import share_forwards

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sizes", default="2000,8000", help="comma-separated training sample counts")
    parser.add_argument("--eval-samples", type=int, default=None, help="default: the full 872-sample dev set")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attack-samples", type=int, default=300)
    parser.add_argument("--no-lora", dest="lora", action="store_false")
    parser.add_argument("--no-leakage", dest="leakage", action="store_false",
                        help="skip the attacks (for a workdir whose sizes were already measured for leakage elsewhere)")
    parser.add_argument("--quick", action="store_true", help="48 training samples, 64 dev samples, 2 epochs, "
                                                             "attacks on 16 uploads")
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.eval_samples, args.epochs, args.attack_samples = "48", 64, 2, 16
    sizes = sorted(int(v) for v in args.sizes.split(","))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cost_matched-"))
    (workdir / "points").mkdir(parents=True, exist_ok=True)
    base = FinetuneConfig(model=args.model, eval_samples=args.eval_samples, epochs=args.epochs, seed=args.seed,
                          mode="side_network", reuse_forwards=True)
    configs = {n: replace(base, train_samples=n, workdir=str(workdir / "views" / f"n{n}_k1")) for n in sizes}
    (table,) = share_forwards(configs.values(), progress=False)  # one device configuration: one table
    points = []
    with serving([table]):
        for n, config in configs.items():
            path = workdir / "points" / f"pae_n{n}_k1.json"
            if not path.is_file():
                path.write_text(json.dumps(run_point(args, config, table, args.leakage and n == sizes[0])))
            points.append(json.loads(path.read_text()))
            path = workdir / "points" / f"lora_n{n}.json"
            if args.lora and not path.is_file():
                path.write_text(json.dumps(run_lora(config)))
            if path.is_file():
                points.append(json.loads(path.read_text()))
    plot(points, workdir / "cost_matched.png")
    print(json.dumps({"forward_seconds_train": table.seconds_per_forward * sizes[-1], "train_pool": sizes[-1],
                      "points": points}, indent=1))


if __name__ == "__main__":
    main()
