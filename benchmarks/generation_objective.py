"""Which metric should the generation server's MSE on r use? A linear read-out, offline, on SmolLM2 + Alpaca.

PAE's objective through the head, Σ_t (sᵀGs − 2sᵀr_t) with G = W_UᵀW_U, is least squares towards G⁻¹r_t.
Any fixed metric M gives the target M⁻¹r_t instead: identity (plain r, the negative gradient), G (PAE),
or the backbone's average Fisher on the training positions, E_t[W_Uᵀ(diag p_t − p_t p_tᵀ)W_U] (a
natural-gradient step; it depends on the device's data, so it is not something the server gets for
free). For each, a ridge read-out of all uploaded layers' states (the side network's best linear
case) is fitted on the training positions and the evaluation answer NLL is scored at every scale of
the correction added to the logits. Teacher-forced forward outputs are cached in --workdir
(train.npz, eval.npz), so a rerun only refits. Prints one JSON object. Example:
  OMP_NUM_THREADS=1 python benchmarks/generation_objective.py --train-file ../shared/data/alpaca/alpaca_5000.jsonl \\
      --train-samples 400 --eval-samples 100 --workdir runs/generation-objective
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from generation import clean_copy  # sibling script: python puts benchmarks/ on sys.path

SCALES = (0.0,) + tuple(float(10 ** (k / 2)) for k in range(-14, 9))


def cached_outputs(args: argparse.Namespace) -> dict[str, dict[str, np.ndarray]]:
    """Teacher-forced outputs of the train and eval samples (states of the layers, final states, targets)."""
    from protocol.model.backbone import load_backbone
    from protocol.modes.generation.device import GenerationDevice
    from secure_assist.config import FinetuneConfig
    from secure_assist.task_kinds import task_kind

    out = {}
    config = FinetuneConfig(model=args.model, task="generation", train_file=clean_copy(args)[0],
                            train_samples=args.train_samples, eval_samples=args.eval_samples,
                            layers=tuple(int(x) for x in args.layers.split(",")), seed=args.seed)
    task, train, evaluate = task_kind(config).data(config)
    device = None
    for name, examples in (("train", train), ("eval", evaluate)):
        path = Path(args.workdir) / f"{name}.npz"
        if not path.is_file():
            device = device or GenerationDevice(load_backbone(args.model), task, layers=config.layers, batch_size=8,
                                                progress=False)
            parts = [outputs for _, outputs in device.batches(examples, name)]
            np.savez(path, acts=torch.cat([p.activations for p in parts]).half().numpy(),
                     final=torch.cat([p.final_states for p in parts]).numpy(),
                     targets=torch.cat([p.targets for p in parts]).numpy(),
                     counts=torch.cat([p.counts for p in parts]).numpy())
        out[name] = dict(np.load(path))
    return out


def inverse(matrix: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """M⁻¹ with eigenvalues floored at `floor` times the largest."""
    values, vectors = torch.linalg.eigh(matrix.double())
    return (vectors / values.clamp_min(values.max() * floor)) @ vectors.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-file", required=True)
    parser.add_argument("--train-samples", type=int, default=400)
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--eval-rows", type=int, default=1200, help="answer positions scored (memory: rows × V)")
    parser.add_argument("--layers", default="5,10,15,20,25,30")
    parser.add_argument("--ridge", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    data = cached_outputs(args)

    from protocol.model.backbone import load_backbone

    head = load_backbone(args.model).model.get_output_embeddings().weight.detach().float()
    train, test = data["train"], data["eval"]
    final, targets = torch.from_numpy(train["final"]), torch.from_numpy(train["targets"]).long()
    probs = torch.cat([torch.softmax(final[i:i + 512] @ head.T, dim=-1) for i in range(0, len(final), 512)])
    expected = probs @ head
    residual = head[targets] - expected  # r_t = W_Uᵀ(onehot(y_t) − p_t)
    fisher = (head.T * probs.mean(dim=0)) @ head - expected.T @ expected / len(expected)
    del probs
    metrics = {"identity": torch.eye(head.shape[1]), "G (PAE)": head.T @ head, "average Fisher": fisher}

    features = torch.from_numpy(train["acts"].astype(np.float32)).flatten(1)
    mean, scale = features.mean(dim=0), features.std(dim=0) + 1e-3
    design = torch.cat([(features - mean) / scale, torch.ones(len(features), 1)], dim=1).double()
    gram = design.T @ design + args.ridge * torch.eye(design.shape[1], dtype=torch.double)
    rows = args.eval_rows
    test_features = torch.from_numpy(test["acts"][:rows].astype(np.float32)).flatten(1)
    test_design = torch.cat([(test_features - mean) / scale, torch.ones(len(test_features), 1)], dim=1).double()
    test_logits = torch.from_numpy(test["final"][:rows]) @ head.T
    test_targets = torch.from_numpy(test["targets"][:rows]).long()
    results = {}
    for name, metric in metrics.items():
        weights = torch.linalg.solve(gram, design.T @ (residual.double() @ inverse(metric)))
        shift = (test_design @ weights).float() @ head.T
        nll = [float(torch.nn.functional.cross_entropy(test_logits + scale_ * shift, test_targets)) for scale_ in SCALES]
        best = int(np.argmin(nll))
        results[name] = {"nll_by_scale": nll, "best_scale": SCALES[best], "best_nll": nll[best],
                         "reduction": nll[0] - nll[best]}
    print(json.dumps({"settings": vars(args), "train_positions": len(targets), "eval_positions": int(len(test_targets)),
                      "zero_shot_nll": results["G (PAE)"]["nll_by_scale"][0], "scales": list(SCALES),
                      "metrics": results}, indent=1))


if __name__ == "__main__":
    main()
