"""Activation-side protections on SST-2 / SmolLM2-135M, with the attacks that test them (prints JSON).

Sections:
  variants  per protection (plain PAE, activation_rotation, activation_rotation + he_ckks,
            activation_noise at a few σ): a real `run_finetune` (same 2,000-sample subset and the
            same device hold-out split for all: 1,800 uploaded, 200 for the safeguard), dev accuracy
            with its 95% CI and the paired difference to plain PAE, then the attacks exactly as the
            audit runs them (`attack_reports`: alignment attacks last, each followed by the attacks
            re-run on the states it realigned) and the audit's verdict line
  pairs     on the activation_rotation run: how many known pairs recover R (Procrustes on k of the
            uploads, k up to every upload), and how the public head reads the realigned states
  corpus    on the same run: distribution alignment from 100, 300 and 1,000 public texts

    python benchmarks/activation_protections.py --workdir runs/act [--sections variants,pairs,corpus]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would shadow packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import torch

from attacks.alignment import DistributionAlignment, KnownPairs
from attacks.base import NotApplicable
from attacks.registry import get_attack
from attacks.realigned_view import RealignedView
from protocol.model.backbone import load_backbone
from protocol.device.features import ForwardCachingDevice
from protocol.model.model_io import load_finetuned
from protocol.server.transcript import ServerView
from secure_assist.audit.attack_runs import attack_reports
from secure_assist.audit.rows import ACCURACY
from secure_assist.audit.verdict import headline, leak_clauses
from secure_assist.audit.auditor import (
    load_ground_truth, run_on_view, score_alignment, score_labels, upload_texts,
)
from secure_assist.audit.public_knowledge import default_public_knowledge
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data
from secure_assist.finetune import run_finetune
from secure_assist.metrics import bootstrap_interval, clopper_pearson
from secure_assist.training.workdir import SERVER_DIR

NOISE_MULTIPLIERS = (0.01, 0.03, 0.1)
VARIANTS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "plain": (("none",), {}),
    "activation_rotation": (("activation_rotation",), {}),
    "activation_rotation+he_ckks": (("activation_rotation", "he_ckks"), {}),
    **{f"activation_noise σ={s:g}": (("activation_noise",), {"activation_noise_multiplier": s})
       for s in NOISE_MULTIPLIERS},
}
# pivot_logit_lens and pivot_nearest_embedding are left out: on plain PAE they score token F1 0.05 and
# 0.002 (BENCHMARKS, Attacks) and cost minutes per run at 1,800 samples.
ATTACKS = ("delta_argmax", "side_model", "public_head_zero_shot", "clustering_activations", "model_completion_k8",
           "model_completion_k32", "model_completion_k128", "candidate_matching", "rotation_invariant_matching",
           "learned_inversion", "model_extraction", "distribution_alignment", "known_pairs_k1", "known_pairs_k8",
           "known_pairs_k64", "matching_alignment")
DROP = ("description", "workdir")  # the same in every row of a run
PAIR_COUNTS = (1, 8, 64, 128, 256, 576, 1000, 1800)
CORPUS_SIZES = (100, 300, 1000)


def config_of(args: argparse.Namespace, name: str) -> FinetuneConfig:
    mechanisms, parameters = VARIANTS[name]
    return FinetuneConfig(model=args.model, train_samples=args.train_samples, epochs=args.epochs, mechanism=mechanisms,
                          safeguard_fraction=0.1, mechanism_seed=args.seed, seed=args.seed, reuse_forwards=True,
                          workdir=str(Path(args.workdir) / name.replace(" ", "_").replace("=", "")), **parameters)


def dev_correct(config: FinetuneConfig, model_file: str) -> np.ndarray:
    """Per dev example: is the deployed model right (device forwards from its cache)."""
    task, _, evaluate = resolve_data(config)
    model = load_finetuned(model_file)
    device = ForwardCachingDevice(load_backbone(config.model), task, layers=model.layers,
                                  payload_dtype=model.payload_dtype, progress=False)
    _, combined = device.scores(evaluate, model.side_network)
    return combined.argmax(axis=1) == np.array([e.label for e in evaluate])


def variant_section(args: argparse.Namespace, name: str, plain: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray]:
    config = config_of(args, name)
    summary = run_finetune(config, progress=args.progress, overwrite=True)
    correct = dev_correct(config, summary.model_file)
    workdir = Path(config.workdir)
    task, _, evaluate = resolve_data(config)
    public = default_public_knowledge(config.model, task, upload_texts(load_ground_truth(workdir)), config.seed,
                                      args.progress, mechanisms=config.mechanism)
    rows = []
    for attack, report, seconds in attack_reports(args.attacks, workdir, public, config.seed, args.progress, evaluate):
        row = ({"attack": attack, "status": "not_applicable", "reason": str(report)}
               if isinstance(report, NotApplicable) else {**report, "status": "ok", **headline(report)})
        rows.append({**row, "seconds": round(seconds, 1)})
    labels = [r for r in rows if r["status"] == "ok" and r["kind"] == "labels" and r["activations_only"]]
    best = max(labels, key=lambda r: r["balanced_accuracy"]) if labels else None
    keys = ("attack", "balanced_accuracy", "balanced_accuracy_ci95", "accuracy", "ci95")
    variant = {"variant": name, "attacks": rows, "dp_check": None,
               "utility": {"metric": ACCURACY.key, "mechanisms": summary.mechanisms},
               "activations_only_baseline": best and {k: best[k] for k in keys}}
    k = int(correct.sum())
    out = {"variant": name, "mechanisms": list(config.mechanism), "accuracy": summary.metrics["accuracy"],
           "accuracy_ci95": clopper_pearson(k, len(correct)),
           "zero_shot_accuracy": summary.metrics["zero_shot_accuracy"],
           "safeguard": summary.safeguard, "n_train": summary.n_train, "n_eval": summary.n_eval,
           "upload_bytes_per_sample": summary.upload_bytes_per_sample,
           "epsilon": next((m.get("epsilon") for m in summary.mechanisms if "epsilon" in m), None),
           "activations_only_baseline": variant["activations_only_baseline"],
           "verdict": "; ".join(leak_clauses(variant)),
           "attacks": [{key: value for key, value in r.items() if key not in DROP} for r in rows]}
    if plain is not None:
        difference = correct.astype(float) - plain
        out["accuracy_minus_plain"] = float(difference.mean())
        out["accuracy_minus_plain_ci95"] = bootstrap_interval(lambda idx: float(difference[idx].mean()),
                                                              len(difference), args.seed)
    return out, correct.astype(float)


def _rotated_run(args: argparse.Namespace) -> tuple[Path, Any, ServerView]:
    config = config_of(args, "activation_rotation")
    workdir = Path(config.workdir)
    public = default_public_knowledge(config.model, resolve_data(config)[0], upload_texts(load_ground_truth(workdir)),
                                      config.seed, args.progress, mechanisms=config.mechanism)
    return workdir, public, ServerView(workdir / SERVER_DIR)


def _realigned_zero_shot(attack: Any, workdir: Path, public: Any, view: ServerView, seed: int) -> dict[str, Any]:
    """Score an alignment, then the public head on the states it realigned."""
    result = run_on_view(attack, view, public)
    scored = score_alignment(result, attack, view, workdir, seed)
    realigned = RealignedView(view, result.rotation, attack.NAME)
    head = get_attack("public_head_zero_shot")
    labels = score_labels(run_on_view(head, realigned, public), load_ground_truth(workdir), seed)
    return {**{k: scored[k] for k in ("layers_recovered", "layers", "rotation_relative_error_mean",
                                      "centred_state_cosine", "centred_state_cosine_ci95")},
            "public_head_zero_shot": labels["accuracy"], "public_head_zero_shot_ci95": labels["ci95"]}


def pairs_section(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Procrustes on k known pairs, k from 1 to every upload (the known uploads in a seed-fixed order)."""
    workdir, public, view = _rotated_run(args)
    # Every upload in upload order (itself a seed-fixed shuffle): their public-backbone states are the
    # candidate pool's first group, already computed; the first k are the known ones.
    known = tuple((sample_id, row.text) for sample_id, row in load_ground_truth(workdir).items())
    rows = []
    for k in [k for k in PAIR_COUNTS if k <= len(known)]:
        attack = type(f"KnownPairsK{k}", (KnownPairs,), {"NAME": f"known_pairs_k{k}", "K": k})()
        rows.append({"known_pairs": k, **_realigned_zero_shot(attack, workdir, dataclasses.replace(
            public, known_samples=known[:k]), view, args.seed)})
    return rows


def corpus_section(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Distribution alignment from the first m public texts."""
    workdir, public, view = _rotated_run(args)
    return [{"public_texts": m, **_realigned_zero_shot(DistributionAlignment(), workdir, dataclasses.replace(
        public, unlabeled_texts=public.unlabeled_texts[:m]), view, args.seed)} for m in CORPUS_SIZES]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="folder for the runs (one per variant)")
    parser.add_argument("--sections", default="variants,pairs,corpus")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    args.attacks = tuple(args.attacks.split(","))
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variant(s) {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    sections, result = args.sections.split(","), {"setting": {k: v for k, v in vars(args).items()}}
    if "variants" in sections:
        result["variants"], plain = [], None
        for name in args.variants.split(","):
            row, correct = variant_section(args, name, plain)
            plain = correct if name == "plain" else plain
            result["variants"].append(row)
            print(json.dumps(row, default=float), file=sys.stderr, flush=True)  # progress: one line per variant
    if "pairs" in sections:
        result["pairs"] = pairs_section(args)
    if "corpus" in sections:
        result["corpus"] = corpus_section(args)
    print(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
