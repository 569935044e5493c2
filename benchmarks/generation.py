"""Generation on Alpaca with SmolLM2-135M: zero-shot, PAE, device_local, local LoRA and MobiLLM-style, side by side.

Each phase runs in its own subprocess so that its peak RSS is its own:
  pae      `run_training` in the `generation` mode (zero-shot and PAE answer NLL, token accuracy,
           ROUGE-L, bytes, seconds, RSS), then the server's unscaled correction on the first
           --space-samples evaluation samples at several scales, in logit and in probability space
  local    the same side network trained on the device (`generation_local`)
  lora     local LoRA (peft, r = 8 on q/v), SFT on the answer tokens of the same training samples
  mobillm  MobiLLM-style uploads (every token of prompt + answer at every layer): bytes per sample
Rows with a blank instruction or answer are dropped from a copy of the train file first
(`finetune` refuses them with their line number). The main process adds paired bootstrap intervals over evaluation samples (PAE vs zero-shot,
PAE vs LoRA) and the share of LoRA's NLL reduction that PAE reaches. Prints one JSON object.
Every training run goes through the run path (`run_training`) or a reference's entry point
(`local_lora_sft`, `measure_generation_upload`); the generation runs forward their own samples
(`reuse_forwards` shares classification passes only), so PAE and `generation_local` each pay
one forward pass per sample, as before.
Example (the data is read from the shared folder; it is never packaged):
  OMP_NUM_THREADS=1 python benchmarks/generation.py --train-file ../shared/data/alpaca/alpaca_5000.jsonl \\
      --train-samples 2000 --eval-samples 500 --layers 5,10,15,20,25,30 --workdir runs/generation
  OMP_NUM_THREADS=1 python benchmarks/generation.py --train-file ../shared/data/alpaca/alpaca_5000.jsonl --quick
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from core_pae import cached_phase, run_phase  # sibling script: python puts benchmarks/ on sys.path

SCALES = (0.0, 1.0, 4.0, 16.0, 64.0, 256.0, 512.0, 1024.0, 2048.0)


def clean_copy(args: argparse.Namespace) -> tuple[str, list[int]]:
    """(a copy of the JSONL train file without rows whose instruction or answer is blank, their
    line numbers). `finetune` refuses such rows (the shared Alpaca file has two: 2336, 4659)."""
    from protocol.files import write_atomic

    kept, dropped = [], []
    for number, line in enumerate(Path(args.train_file).read_text(encoding="utf-8").splitlines(), start=1):
        row = json.loads(line)
        if str(row.get("instruction", "")).strip() and str(row.get("output", "")).strip():
            kept.append(line)
        else:
            dropped.append(number)
    path = Path(args.workdir) / "train_clean.jsonl"
    if not path.is_file():
        write_atomic(path, ("\n".join(kept) + "\n").encode())
    return str(path), dropped


def _config(args: argparse.Namespace, mode: str) -> object:
    from secure_assist.config import FinetuneConfig

    return FinetuneConfig(model=args.model, task="generation", train_file=clean_copy(args)[0],
                          train_samples=args.train_samples, eval_samples=args.eval_samples, epochs=args.epochs,
                          layers=tuple(int(x) for x in args.layers.split(",")) if args.layers else None,
                          rouge_samples=args.rouge_samples, device_batch_size=args.batch_size, seed=args.seed,
                          mode=mode, workdir=str(Path(args.workdir) / mode))


def _save_nll(args: argparse.Namespace, name: str, per_sample_nll: np.ndarray, counts: np.ndarray) -> None:
    np.savez(Path(args.workdir) / f"{name}_nll.npz", nll=per_sample_nll, counts=counts)


def _finetune(args: argparse.Namespace, mode: str) -> dict:
    from secure_assist.training.run import run_training
    from secure_assist.training.workdir import DEVICE_DIR, EVAL_SCORES_FILE

    config = _config(args, mode)
    summary = run_training(config, progress=False, overwrite=True).to_json()
    summary.pop("config")
    scores = np.load(Path(config.workdir) / DEVICE_DIR / EVAL_SCORES_FILE)
    _save_nll(args, mode, scores["nll"], scores["counts"])
    return summary


def _phase_pae(args: argparse.Namespace) -> dict:
    from protocol.model.backbone import load_backbone
    from protocol.wire.codec import decode
    from protocol.modes.generation.device import GenerationDevice, answer_log_probs
    from protocol.model.side_network import HiddenCorrection, network_from_arrays
    from protocol.server.transcript import SIDE_NETWORK_FILE
    from secure_assist.task_kinds import task_kind

    summary = _finetune(args, "generation")
    # The correction as the server trained it (before the device's scale), in both spaces.
    config = _config(args, "generation")
    task, _, evaluate = task_kind(config).data(config)
    state, metadata = decode((Path(summary["server_view"]) / SIDE_NETWORK_FILE).read_bytes())
    side = network_from_arrays(state, json.loads(metadata["architecture"]), HiddenCorrection).eval()
    device = GenerationDevice(load_backbone(args.model), task, layers=config.layers, progress=False)
    totals = {space: np.zeros(len(SCALES)) for space in ("logit", "probability")}
    tokens = 0
    for _, outputs in device.batches(evaluate[:args.space_samples], "space comparison"):
        with torch.inference_mode():
            corrections = side(outputs.activations)
        for space in totals:
            log_probs, _ = answer_log_probs(device.weight, outputs.final_states, corrections, outputs.targets,
                                            SCALES, space)
            totals[space] += -log_probs.double().sum(dim=0).numpy()
        tokens += len(outputs.targets)
    summary["space_comparison"] = {"samples": min(args.space_samples, len(evaluate)), "scales": list(SCALES),
                                   **{f"{space}_nll": (values / tokens).tolist() for space, values in totals.items()}}
    return summary


def _phase_local(args: argparse.Namespace) -> dict:
    return _finetune(args, "generation_local")


def _phase_lora(args: argparse.Namespace) -> dict:
    from protocol.model.backbone import load_backbone
    from secure_assist.references.local_lora import LoraSettings, local_lora_sft
    from protocol.modes.generation.device import GenerationDevice
    from secure_assist.task_kinds import task_kind
    from secure_assist.task_kinds.generation import generations, per_sample_sums, reference_text
    from secure_assist.metrics import rouge_l
    from secure_assist.training.resources import PeakMemory

    config = _config(args, "generation")
    task, train, evaluate = task_kind(config).data(config)
    backbone = load_backbone(args.model)
    settings = LoraSettings(epochs=args.lora_epochs, seed=args.seed)
    with PeakMemory() as memory, local_lora_sft(backbone, task, train, settings, progress=False) as run:
        trainable, steps, seconds = run
        device = GenerationDevice(backbone, task, progress=False)
        log_probs, correct, counts = device.token_scores(evaluate, None, scales=(0.0,))
        prompts = evaluate[:args.rouge_samples]
        texts = generations(device, prompts, None)
    _save_nll(args, "lora", per_sample_sums(-log_probs.astype(np.float64), counts), counts)
    rouge = [rouge_l(t, reference_text(device, e)) for t, e in zip(texts, prompts)]
    return {"eval_answer_nll": float(-log_probs.sum() / counts.sum()),
            "eval_token_accuracy": float(correct.sum() / counts.sum()), "rouge_l": float(np.mean(rouge)),
            "rouge_samples": len(prompts), "trainable_parameters": trainable, "steps": steps,
            "train_seconds": seconds, "train_samples": len(train), "peak_rss_mib": memory.peak_mib}


def _phase_mobillm(args: argparse.Namespace) -> dict:
    from protocol.model.backbone import load_backbone
    from secure_assist.references.mobillm import measure_generation_upload
    from secure_assist.task_kinds import task_kind
    from secure_assist.training.resources import PeakMemory

    config = _config(args, "generation")
    task, train, _ = task_kind(config).data(replace(config, train_samples=args.mobillm_samples))
    with PeakMemory() as memory:
        run = measure_generation_upload(load_backbone(args.model), task, train, progress=False)
    return {"samples": run.samples, "bytes_up_per_sample_per_epoch": run.bytes_up / run.samples,
            "device_seconds_per_sample": run.device_seconds / run.samples, "peak_rss_mib": memory.peak_mib}


PHASES = {"pae": _phase_pae, "local": _phase_local, "lora": _phase_lora, "mobillm": _phase_mobillm}


def _paired(workdir: Path, first: str, second: str | None) -> dict:
    """NLL per token of `first` minus `second` (None: the zero-shot column of `first`), with a 95%
    paired bootstrap interval over evaluation samples."""
    from secure_assist.metrics import bootstrap_interval

    saved = np.load(workdir / f"{first}_nll.npz")
    left = saved["nll"][:, -1]
    right = saved["nll"][:, 0] if second is None else np.load(workdir / f"{second}_nll.npz")["nll"][:, -1]
    tokens = saved["counts"].astype(float)

    def gap(idx: np.ndarray) -> float:
        return float((left[idx] - right[idx]).sum() / tokens[idx].sum())

    return {"nll_difference": gap(np.arange(len(tokens))), "ci95": bootstrap_interval(gap, len(tokens))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-file", required=True)
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--layers", default="5,10,15,20,25,30")
    parser.add_argument("--rouge-samples", type=int, default=100)
    parser.add_argument("--space-samples", type=int, default=200)
    parser.add_argument("--lora-epochs", type=int, default=1)
    parser.add_argument("--mobillm-samples", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--phases", default="pae,local,lora,mobillm")
    parser.add_argument("--quick", action="store_true", help="sets its own sizes: 32 training samples, 16 "
                                                             "evaluation samples, 2 epochs, 4 ROUGE-L and MobiLLM samples")
    args = parser.parse_args()
    if args.quick:
        args.train_samples, args.eval_samples, args.epochs = 32, 16, 2
        args.rouge_samples, args.space_samples, args.mobillm_samples = 4, 16, 4
    if args.phase:
        print(json.dumps(cached_phase(PHASES, args)))
        return
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="generation-")
    # The phases get the resolved sizes as flags (not --quick).
    argv = [item for name, value in vars(args).items()
            if name not in ("phase", "phases", "quick") and value is not None
            for item in ("--" + name.replace("_", "-"), str(value))]
    results = {name: run_phase(__file__, name, argv) for name in args.phases.split(",")}
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("phase", "quick")}
    results["settings"]["dropped_blank_rows"] = clean_copy(args)[1]
    workdir = Path(args.workdir)
    if "pae" in results:
        results["pae_vs_zero_shot"] = _paired(workdir, "generation", None)
    if {"pae", "lora"} <= results.keys():
        results["pae_vs_lora"] = _paired(workdir, "generation", "lora")
        zero_shot = results["pae"]["zero_shot_answer_nll"]
        results["share_of_lora_nll_reduction"] = ((zero_shot - results["pae"]["eval_answer_nll"])
                                                  / (zero_shot - results["lora"]["eval_answer_nll"]))
    if {"pae", "mobillm"} <= results.keys():
        results["mobillm_over_pae_upload_per_epoch"] = (results["mobillm"]["bytes_up_per_sample_per_epoch"]
                                                        / results["pae"]["upload_bytes_per_sample"])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
