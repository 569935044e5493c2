"""PAE vs local LoRA vs MobiLLM-style on SST-2 with SmolLM2-135M, side by side in one run.

Each phase runs in its own subprocess so that its peak RSS is its own:
  inference  inference-only forward passes over the training set (the memory reference)
  pae        `run_finetune` (device + in-process server): accuracy, bytes, times, memory
  lora       local LoRA (peft) on the same samples: accuracy, time, memory
  mobillm    MobiLLM-style uploads (all tokens, every layer, every epoch): bytes per sample
Prints one JSON object. Example:
  python benchmarks/core_pae.py --train-samples 2000 --epochs 20 --mobillm-samples 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _phase_inference(args: argparse.Namespace) -> dict:
    from protocol.model.backbone import load_backbone
    from protocol.device.forward_device import DeviceRole
    from protocol.data.tasks import SST2
    from secure_assist.training.resources import PeakMemory

    # Peak memory depends on the batch, not on how many batches: a prefix is enough.
    train = _train(args)[:args.inference_samples]
    device = DeviceRole(load_backbone(args.model), SST2, batch_size=args.batch_size, progress=False)
    with PeakMemory() as memory:
        for _ in device.batches(train, "inference"):
            pass
    return {"peak_rss_mib": memory.peak_mib, "seconds": memory.seconds, "samples": len(train),
            "samples_per_second": len(train) / memory.seconds}


def _phase_pae(args: argparse.Namespace) -> dict:
    from secure_assist.config import FinetuneConfig
    from secure_assist.finetune import run_finetune

    config = FinetuneConfig(model=args.model, train_samples=args.train_samples, eval_samples=args.eval_samples,
                            epochs=args.epochs, device_batch_size=args.batch_size, seed=args.seed,
                            workdir=str(Path(args.workdir) / "pae"))
    summary = run_finetune(config, progress=False, overwrite=True).to_json()
    summary.pop("config")
    return summary


def _phase_lora(args: argparse.Namespace) -> dict:
    from protocol.model.backbone import load_backbone
    from secure_assist.references.local_lora import LoraSettings, run_local_lora
    from protocol.data.tasks import SST2
    from secure_assist.task_kinds.classification import accuracy
    from secure_assist.training.resources import PeakMemory

    train, evaluate = _train(args), _eval(args)
    backbone = load_backbone(args.model)
    with PeakMemory() as memory:
        run = run_local_lora(backbone, SST2, train, evaluate,
                             LoraSettings(epochs=args.lora_epochs, seed=args.seed), progress=False)
    labels = np.array([e.label for e in evaluate])
    return {"accuracy": accuracy(run.probabilities, labels), "trainable_parameters": run.trainable_parameters,
            "train_seconds": run.train_seconds, "steps": run.steps, "peak_rss_mib": memory.peak_mib}


def _phase_mobillm(args: argparse.Namespace) -> dict:
    from protocol.model.backbone import load_backbone
    from secure_assist.references.mobillm import run_mobillm
    from protocol.data.tasks import SST2
    from secure_assist.task_kinds.classification import accuracy

    train = _train(args)[:args.mobillm_samples]
    evaluate = _eval(args)[:args.mobillm_samples]
    run = run_mobillm(load_backbone(args.model), SST2, train, evaluate, Path(args.workdir) / "mobillm",
                      epochs=3, batch_size=args.batch_size, seed=args.seed, progress=False)
    labels = np.array([e.label for e in evaluate])
    return {"samples": len(train), "bytes_up_per_epoch": run.bytes_up_per_epoch,
            "bytes_up_per_sample_per_epoch": [b / len(train) for b in run.bytes_up_per_epoch],
            "device_seconds": run.device_seconds, "device_forward_samples": run.device_forward_samples,
            "accuracy_on_subset": accuracy(run.probabilities, labels)}


def _train(args: argparse.Namespace) -> list:
    from protocol.data.tasks import builtin_split, sample

    return sample(builtin_split("sst2", "train"), args.train_samples, args.seed)


def _eval(args: argparse.Namespace) -> list:
    from protocol.data.tasks import builtin_split, sample

    dev = builtin_split("sst2", "dev")
    return sample(dev, args.eval_samples, args.seed + 1) if args.eval_samples else dev


PHASES = {"inference": _phase_inference, "pae": _phase_pae, "lora": _phase_lora, "mobillm": _phase_mobillm}


def cached_phase(phases: dict, args: argparse.Namespace) -> dict:
    """A phase's result, kept in the work directory so an interrupted run resumes where it stopped
    (and a phase can run ahead in another process with the same arguments)."""
    from protocol.files import write_atomic

    path = Path(args.workdir) / f"{args.phase}.json" if args.workdir else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    result = phases[args.phase](args)
    if path is not None:
        write_atomic(path, json.dumps(result).encode())
    return result


def run_phase(script: str, name: str, argv: list[str]) -> dict:
    """Run one phase of `script` in its own process (its peak RSS is its own); its JSON result."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, script, "--phase", name, *argv], check=True,
                         capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["phase_wall_seconds"] = time.perf_counter() - start
    print(f"[{Path(script).stem}] {name} done in {result['phase_wall_seconds']:.0f} s", file=sys.stderr)
    return result


def add_run_arguments(parser: argparse.ArgumentParser, with_epochs: bool = True) -> None:
    """The flags the core benchmarks share: backbone, data sizes and (for those that train PAE) its epochs."""
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=None, help="default: the full 872-sample dev set")
    if with_epochs:
        parser.add_argument("--epochs", type=int, default=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--lora-epochs", type=int, default=1)
    parser.add_argument("--mobillm-samples", type=int, default=200)
    parser.add_argument("--inference-samples", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--phases", default="inference,pae,lora,mobillm")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(cached_phase(PHASES, args)))
        return
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="core-pae-")
    shared = ("model", "train_samples", "eval_samples", "epochs", "lora_epochs", "mobillm_samples", "inference_samples",
              "batch_size", "seed", "workdir")
    argv = [item for name in shared if getattr(args, name) is not None
            for item in ("--" + name.replace("_", "-"), str(getattr(args, name)))]
    results = {name: run_phase(__file__, name, argv) for name in args.phases.split(",")}
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("phase",)}
    if {"pae", "mobillm"} <= results.keys():
        pae_bytes = results["pae"]["upload_bytes_per_sample"]
        per_epoch = results["mobillm"]["bytes_up_per_sample_per_epoch"]
        results["mobillm_over_pae_upload_ratio"] = {
            "epoch_1": per_epoch[0] / pae_bytes,
            "three_epochs": sum(per_epoch) / pae_bytes,  # PAE uploads once; epochs 2-3 run from the cache
        }
    if {"pae", "inference"} <= results.keys():
        results["pae_device_peak_over_inference_peak"] = (
            results["pae"]["device_peak_rss_mib"] / results["inference"]["peak_rss_mib"])
        results["server_cached_epoch_over_device_epoch1"] = (
            results["pae"]["server_seconds_per_cached_epoch"] / results["pae"]["device_seconds_epoch1"])
    if {"pae", "lora"} <= results.keys():
        results["pae_minus_lora_accuracy_points"] = 100 * (results["pae"]["accuracy"] - results["lora"]["accuracy"])
        results["lora_peak_over_pae_device_peak"] = (
            results["lora"]["peak_rss_mib"] / results["pae"]["device_peak_rss_mib"])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
