"""What can the states PAE uploads carry on instruction data? Read-outs fitted on the evaluation split itself.

Same data as `benchmarks/generation.py` (the cleaned train file, its seed-fixed 500-sample evaluation split,
answers cut to 32 tokens). Each read-out maps states to a hidden-space correction s_t that is added through
the public head, z_t + W_U s_t, exactly the form of PAE's side output, and is trained on the answer-token
cross-entropy itself (not PAE's MSE proxy through the head):
  uploaded_linear, uploaded_mlp   the uploaded layers' states at the answer positions        (bound a)
  all_linear, all_mlp             every layer's states at the answer positions               (bound b)
  sequence_attention              one causal attention layer over the uploaded layers' states at every
                                  position of prompt + answer (what MobiLLM's side network sees)   (bound c)
These five are FITTED ON THE EVALUATION SPLIT AND SCORED ON IT: optimistic upper bounds of what a read-out
of these inputs can reach, not fair scores (as `benchmarks/core_ceiling.py` tunes on its dev set); their
score is also their final training NLL. The fair counterpart (d) trains the `uploaded_linear` form on the
training split, with PAE's MSE through the head (`fair_linear_mse`: whitened r_t targets, as the generation
server fits them) or with the cross-entropy (`fair_linear_ce`); like PAE's device, each holds out the same 10%
validation split, picks the epoch and the correction's scale on it (the device's safeguard rule), and is
scored on the evaluation split. `fair_linear_rounds` is boosting by the device's refreshed signal (the
rounds the generation issue proposes), run here on the cached states: round k fits a new `fair_linear_mse`
read-out to r_t recomputed at the logits corrected by rounds 1..k-1, the validation split scales it, and
the deployed correction is the sum; its rows are scored after each round of --rounds.
Every row reports answer NLL per token and token top-1 with a paired bootstrap 95% interval against zero-shot.
Forward outputs are cached in --workdir as safetensors files and every read-out's result as JSON as soon as
it is done, so a rerun resumes. Prints one JSON object. Example:
  OMP_NUM_THREADS=2 python benchmarks/generation_ceiling.py --train-file ../shared/data/alpaca/alpaca_5000.jsonl \\
      --train-samples 2000 --eval-samples 500 --workdir runs/generation_ceiling
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from generation import clean_copy  # sibling script: python puts benchmarks/ on sys.path

# Run as a script, this file's folder comes first on sys.path and its names would shadow packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from protocol.files import write_atomic  # noqa: E402
from protocol.model.backbone import load_backbone  # noqa: E402
from protocol.modes.generation.device import (  # noqa: E402
    GenerationDevice, answer_log_probs, encode_answers, residual_signal)
from protocol.modes.generation.server import inverse_square_root  # noqa: E402
from secure_assist.config import FinetuneConfig  # noqa: E402
from secure_assist.task_kinds import task_kind  # noqa: E402
from secure_assist.task_kinds.generation import answer_metrics, per_sample_sums  # noqa: E402
from secure_assist.training.run import hold_out_indices  # noqa: E402
from secure_assist.training.safeguard import SCALE_GRID, ScaleDecision, choose_scale  # noqa: E402


@dataclass(frozen=True)
class Readout:
    """One read-out: its inputs ('uploaded', 'all' layers at the answer positions, or 'sequence'), its network
    ('linear', 'mlp', 'attention'), the split it is fitted on ('eval' or 'train') and its objective ('ce', 'mse')."""

    inputs: str
    network: str
    fitted_on: str = "eval"
    objective: str = "ce"
    boosted: bool = False


READOUTS = {
    "uploaded_linear": Readout("uploaded", "linear"),
    "uploaded_mlp": Readout("uploaded", "mlp"),
    "all_linear": Readout("all", "linear"),
    "all_mlp": Readout("all", "mlp"),
    "sequence_attention": Readout("sequence", "attention"),
    "fair_linear_mse": Readout("uploaded", "linear", "train", "mse"),
    "fair_linear_ce": Readout("uploaded", "linear", "train", "ce"),
    "fair_linear_rounds": Readout("uploaded", "linear", "train", "mse", boosted=True),
}


# The flags a read-out's result depends on besides the data (a rerun with others fits it again).
TRAINING_SETTINGS = ("epochs", "lr", "position_batch", "sequence_batch", "mlp_width", "attention_width", "heads")


class Standardize(nn.Module):
    """(x − mean) / std per feature, with statistics of the fitting split (fixed, not trained)."""

    def __init__(self, inputs: torch.Tensor) -> None:
        super().__init__()
        mean = torch.zeros(inputs.shape[1], dtype=torch.float64)
        square = torch.zeros_like(mean)
        for start in range(0, len(inputs), 4096):
            chunk = inputs[start:start + 4096].double()
            mean += chunk.sum(0)
            square += (chunk ** 2).sum(0)
        mean /= len(inputs)
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", (square / len(inputs) - mean ** 2).clamp_min(1e-6).sqrt().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def position_network(kind: str, inputs: torch.Tensor, hidden_size: int, width: int) -> nn.Module:
    """Standardized states of one position → s_t; the last layer starts at zero (the backbone alone)."""
    layers = [nn.Linear(inputs.shape[1], hidden_size)] if kind == "linear" else [
        nn.Linear(inputs.shape[1], width), nn.GELU(), nn.Linear(width, hidden_size)]
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(Standardize(inputs), *layers)


class SequenceReadout(nn.Module):
    """One pre-norm causal self-attention block over a sample's states at every position, → s_t."""

    def __init__(self, states: torch.Tensor, hidden_size: int, width: int, heads: int) -> None:
        super().__init__()
        self.standardize = Standardize(states)
        self.project = nn.Linear(states.shape[1], width)
        self.block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True,
                                                norm_first=True)
        self.out = nn.Linear(width, hidden_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, states: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """(B, T, F) states, (B, T) True at padding → (B, T, hidden) corrections."""
        causal = torch.ones(states.shape[1], states.shape[1], dtype=torch.bool).triu(1)
        return self.out(self.block(self.project(self.standardize(states)), src_mask=causal,
                                   src_key_padding_mask=padding, is_causal=True))


def teacher_forced(args: argparse.Namespace, device: object, examples: list, layers: tuple[int, ...],
                   sequences: bool, name: str) -> dict[str, torch.Tensor]:
    """Forward outputs at the answer positions (`layers`' states rounded to fp16 as uploaded, the final state,
    the target, each sample's count) and, with `sequences`, the uploaded layers' states at every position of
    each sample (flattened) with each sample's length. Cached in <workdir>/<name>_forward.safetensors."""
    path = Path(args.workdir) / f"{name}_forward.safetensors"
    if path.is_file():
        return load_file(path)
    uploaded = tuple(int(x) for x in args.layers.split(","))
    parts: dict[str, list[torch.Tensor]] = {}
    chunks = [examples[i:i + args.forward_batch] for i in range(0, len(examples), args.forward_batch)]
    for chunk in tqdm(chunks, desc=f"{name} forwards", unit="batch"):
        batch = encode_answers(device.backbone, device.task, chunk)
        with torch.inference_mode():
            hidden = device.backbone.model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                                      output_hidden_states=True).hidden_states
        found = {"states": torch.stack([hidden[layer][batch.positions] for layer in layers], 1).half(),
                 "final": hidden[-1][batch.positions].float(), "targets": batch.targets, "counts": batch.counts}
        if sequences:
            lengths = batch.attention_mask.sum(1)
            every = torch.stack([hidden[layer] for layer in uploaded], 2).half()
            found["sequence"] = torch.cat([every[i, :n] for i, n in enumerate(lengths.tolist())])
            found["lengths"] = lengths.cpu()
        for key, value in found.items():
            parts.setdefault(key, []).append(value.cpu())
    tensors = {key: torch.cat(values).contiguous() for key, values in parts.items()}
    tensors["layers"] = torch.tensor(layers)
    temporary = path.with_suffix(".tmp")
    save_file(tensors, temporary)
    os.replace(temporary, path)  # a crash mid-write leaves no half cache behind
    return tensors


def answer_loss(weight: torch.Tensor, final: torch.Tensor, corrections: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
    """Mean answer-token cross-entropy of the corrected logits W_U (h_t + s_t), over the whole vocabulary."""
    return nn.functional.cross_entropy((final + corrections) @ weight.T, targets)


def sample_offsets(counts: torch.Tensor) -> np.ndarray:
    """Row offsets of each sample's answer positions (and the total at the end)."""
    return np.concatenate([[0], np.cumsum(counts.numpy())])


def answer_columns(length: int, count: int) -> slice:
    """The positions of a sample's sequence (prompt + answer, `length` tokens) whose next token is one of its
    `count` answer tokens: the last `count` positions before its last token."""
    return slice(length - count - 1, length - 1)


def sequence_corrections(network: SequenceReadout, data: dict[str, torch.Tensor], samples: np.ndarray) -> torch.Tensor:
    """The corrections at the answer positions of `samples` (rows in sample order)."""
    starts = sample_offsets(data["lengths"])
    lengths, counts = data["lengths"][samples], data["counts"][samples]
    padded = torch.zeros(len(samples), int(lengths.max()), data["inputs"].shape[1])
    padding = torch.ones(len(samples), padded.shape[1], dtype=torch.bool)
    for row, sample in enumerate(samples):
        padded[row, :lengths[row]] = data["inputs"][starts[sample]:starts[sample + 1]].float()
        padding[row, :lengths[row]] = False
    out = network(padded, padding)
    return torch.cat([out[row, answer_columns(n, c)] for row, (n, c) in enumerate(zip(lengths.tolist(),
                                                                                          counts.tolist()))])


def with_inputs(readout: Readout, data: dict[str, torch.Tensor], uploaded: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """A split with the read-out's flattened inputs under 'inputs': one row per answer position, or (sequence)
    one row per position of every sample (the `uploaded` layers, or all the split holds)."""
    if readout.inputs == "sequence":
        inputs = data["sequence"]
    elif readout.inputs == "all":
        inputs = data["states"]
    else:
        held = data["layers"].tolist()
        inputs = data["states"][:, [held.index(layer) for layer in uploaded]]
    return {**data, "inputs": inputs.flatten(1)}


class Fit:
    """A read-out network, fitted by minibatches on one split and applied to any split."""

    def __init__(self, args: argparse.Namespace, readout: Readout, fitted: dict[str, torch.Tensor],
                 weight: torch.Tensor) -> None:
        self.args, self.readout, self.fitted, self.weight = args, readout, fitted, weight
        hidden_size = weight.shape[1]
        if readout.inputs == "sequence":
            self.network: nn.Module = SequenceReadout(fitted["inputs"], hidden_size, args.attention_width, args.heads)
        else:
            self.network = position_network(readout.network, fitted["inputs"], hidden_size, args.mlp_width)
        # PAE's objective: MSE on whitened, scaled targets u = r G^{-1/2}/σ; the correction is s = σ u G^{-1/2}.
        self.output_map = torch.eye(hidden_size)
        if readout.objective == "mse":
            root = torch.from_numpy(inverse_square_root((weight.T @ weight).double().numpy())).float()
            whitened = residual_signal(weight, fitted["final"], fitted["targets"]) @ root
            scale = float(whitened.pow(2).mean().sqrt())
            self.mse_targets, self.output_map = whitened / scale, scale * root

    def corrections(self, data: dict[str, torch.Tensor], rows: np.ndarray | None = None,
                    samples: np.ndarray | None = None) -> torch.Tensor:
        """s_t at answer `rows` of `data` (position read-outs) or at every answer row of `samples` (sequence)."""
        if self.readout.inputs == "sequence":
            return sequence_corrections(self.network, data, samples) @ self.output_map
        return self.network(data["inputs"][rows]) @ self.output_map

    def all_corrections(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        """s_t at every answer row of `data`, in order."""
        self.network.eval()
        sequence = self.readout.inputs == "sequence"
        n, size = (len(data["counts"]), self.args.sequence_batch) if sequence else (len(data["inputs"]), 4096)
        with torch.inference_mode():
            return torch.cat([self.corrections(data, **{"samples" if sequence else "rows":
                                                       np.arange(i, min(i + size, n))}) for i in range(0, n, size)])

    def epoch(self, optimizer: torch.optim.Optimizer, generator: torch.Generator, description: str) -> float:
        """One pass over the fitted split in random minibatches; the mean training loss per answer token."""
        self.network.train()
        data, sequence = self.fitted, self.readout.inputs == "sequence"
        n, size = (len(data["counts"]), self.args.sequence_batch) if sequence else (len(data["inputs"]),
                                                                                   self.args.position_batch)
        offsets = sample_offsets(data["counts"])
        order = torch.randperm(n, generator=generator).numpy()
        total, tokens = 0.0, 0
        for start in tqdm(range(0, n, size), desc=description, unit="batch", leave=False):
            chosen = np.sort(order[start:start + size])
            if self.readout.objective == "mse":  # position read-outs only (the fair rows)
                rows = chosen
                loss = (self.network(data["inputs"][rows]) - self.mse_targets[rows]).pow(2).mean()
            else:
                rows = (np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in chosen]) if sequence
                        else chosen)
                corrections = self.corrections(data, **{"samples" if sequence else "rows": chosen})
                loss = answer_loss(self.weight, data["final"][rows], corrections, data["targets"][rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, tokens = total + loss.item() * len(rows), tokens + len(rows)
        return total / tokens


def scores(weight: torch.Tensor, data: dict[str, torch.Tensor], corrections: torch.Tensor,
           scales: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(log p(y_t), top-1 correct) per answer row, one column per scale of the correction (0: the backbone)."""
    with torch.inference_mode():
        log_probs, correct = answer_log_probs(weight, data["final"], corrections, data["targets"], scales)
    return log_probs.numpy(), correct.numpy()


def fit_readout(args: argparse.Namespace, readout: Readout, split: dict[str, dict[str, torch.Tensor]],
                weight: torch.Tensor) -> tuple[Fit, list[float], ScaleDecision | None, int]:
    """Fit `readout` on its split for --epochs; a read-out fitted on the training split keeps the epoch whose
    validation NLL at its chosen scale is lowest (PAE's device rule, which also chooses the scale).
    Returns (the fit, training loss per epoch, the validation decision or None, the chosen epoch)."""
    torch.manual_seed(args.seed)
    fit = Fit(args, readout, split["eval" if readout.fitted_on == "eval" else "upload"], weight)
    optimizer = torch.optim.Adam(fit.network.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    losses, best, best_epoch, best_state = [], None, 0, None
    for epoch in tqdm(range(args.epochs), desc="fit", unit="epoch", leave=False):
        losses.append(fit.epoch(optimizer, generator, f"epoch {epoch + 1}"))
        if readout.fitted_on == "train":
            log_probs, _ = scores(weight, split["validation"], fit.all_corrections(split["validation"]), SCALE_GRID)
            counts = split["validation"]["counts"].numpy()
            decision = choose_scale(per_sample_sums(-log_probs.astype(np.float64), counts), counts)
            if best is None or decision.validation_nll_chosen < best.validation_nll_chosen:
                best, best_epoch, best_state = decision, epoch + 1, copy.deepcopy(fit.network.state_dict())
    if best_state is not None:
        fit.network.load_state_dict(best_state)
    return fit, losses, best, best_epoch


def shifted(data: dict[str, torch.Tensor], correction: torch.Tensor) -> dict[str, torch.Tensor]:
    """`data` with its final states moved by a hidden-space correction: the logits W_U (h_t + S_t) a device
    holds after deploying the correction S_t, from which its next round's signal r_t is computed."""
    return {**data, "final": data["final"] + correction}


def boosted_rounds(args: argparse.Namespace, readout: Readout, split: dict[str, dict[str, torch.Tensor]],
                   weight: torch.Tensor) -> list[dict]:
    """Rounds of `readout` on the refreshed signal, one result per round of --rounds: round k fits a new
    read-out to r_t at the logits corrected by the sum of rounds 1..k-1 and adds it at its validation scale.
    A round whose scale is 0 changes nothing, so every later round would repeat it: the rounds stop there
    ('dropped_at_round')."""
    wanted = sorted(int(r) for r in args.rounds.split(","))
    total = {key: torch.zeros_like(part["final"]) for key, part in split.items()}
    results, stopped_at = [], None
    for number in tqdm(range(1, wanted[-1] + 1), desc="rounds", unit="round"):
        if stopped_at is None:
            started = time.perf_counter()
            fit, losses, decision, epoch = fit_readout(
                args, readout, {key: shifted(part, total[key]) for key, part in split.items()}, weight)
            fitted = time.perf_counter() - started
            started = time.perf_counter()
            # The device's share of a round: the new side output and the refreshed r_t on the states it holds.
            total["upload"] = total["upload"] + decision.factor * fit.all_corrections(split["upload"])
            residual_signal(weight, split["upload"]["final"] + total["upload"], split["upload"]["targets"])
            refresh = time.perf_counter() - started
            for key in ("validation", "eval"):
                total[key] = total[key] + decision.factor * fit.all_corrections(split[key])
            stopped_at = number if decision.factor == 0 else None
            record = {"training_loss_by_epoch": losses, "chosen_epoch": epoch, "validation": decision.to_json(),
                      "fit_seconds": fitted, "device_refresh_seconds": refresh,
                      "upload_answer_positions": int(split["upload"]["counts"].sum())}
        if number in wanted:
            log_probs, correct = scores(weight, split["eval"], total["eval"], (0.0, 1.0))
            results.append({"round": number, "dropped_at_round": stopped_at, **record,
                            **answer_metrics(log_probs, correct, split["eval"]["counts"].numpy(), args.seed)})
    return results


def run_readout(args: argparse.Namespace, name: str, splits: dict, weight: torch.Tensor) -> dict:
    """Fit one read-out, score it on the evaluation split; its result JSON is written when done and read
    back on a rerun with the same training settings."""
    path = Path(args.workdir) / f"readout_{name}.json"
    readout, started = READOUTS[name], time.perf_counter()
    training = {key: getattr(args, key) for key in TRAINING_SETTINGS}
    if readout.fitted_on == "train":
        training["fitted_samples"] = len(splits["upload"]["counts"]) + len(splits["validation"]["counts"])
    if readout.boosted:
        training["rounds"] = args.rounds
    if path.is_file() and json.loads(path.read_text()).get("training") == training:
        return json.loads(path.read_text())
    uploaded = tuple(int(x) for x in args.layers.split(","))
    needed = ("eval",) if readout.fitted_on == "eval" else ("eval", "upload", "validation")
    split = {key: with_inputs(readout, splits[key], uploaded) for key in needed}
    result: dict = {"readout": asdict(readout), "training": training}
    if readout.boosted:
        result["rounds"] = boosted_rounds(args, readout, split, weight)
    else:
        fit, losses, best, best_epoch = fit_readout(args, readout, split, weight)
        factor = 1.0 if best is None else best.factor
        log_probs, correct = scores(weight, split["eval"], fit.all_corrections(split["eval"]), (0.0, factor))
        result.update({"parameters": sum(p.numel() for p in fit.network.parameters()),
                       "training_loss_by_epoch": losses,
                       **answer_metrics(log_probs, correct, split["eval"]["counts"].numpy(), args.seed)})
        if best is not None:
            result.update({"chosen_epoch": best_epoch, "validation": best.to_json()})
    result["seconds"] = time.perf_counter() - started
    text = json.dumps(result, indent=2)
    write_atomic(path, text.encode())
    return json.loads(text)  # as a rerun reads it back


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-file", required=True)
    parser.add_argument("--train-samples", type=int, default=2000, help="the fair read-outs' training split")
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--layers", default="5,10,15,20,25,30", help="the uploaded layers")
    parser.add_argument("--readouts", default=",".join(READOUTS), help=f"of {', '.join(READOUTS)}")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--position-batch", type=int, default=128, help="answer positions per step")
    parser.add_argument("--sequence-batch", type=int, default=4, help="samples per step (sequence read-out)")
    parser.add_argument("--mlp-width", type=int, default=1024)
    parser.add_argument("--attention-width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--forward-batch", type=int, default=8)
    parser.add_argument("--rounds", default="1,2,4,8", help="after which rounds fair_linear_rounds is scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="runs/generation_ceiling")
    args = parser.parse_args()
    try:
        if min(int(r) for r in args.rounds.split(",")) < 1:
            parser.error("--rounds: rounds are numbered from 1")
    except ValueError:
        parser.error(f"--rounds {args.rounds!r}: give round numbers, e.g. 1,2,4")
    names = args.readouts.split(",")
    unknown = sorted(set(names) - set(READOUTS))
    if unknown:
        parser.error(f"unknown read-outs {unknown}; choose from {', '.join(READOUTS)}")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    # The cached forwards depend on these: a workdir holds one data setting.
    settings = {key: getattr(args, key) for key in ("model", "train_file", "eval_samples", "layers", "seed")}
    settings_file = Path(args.workdir) / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        parser.error(f"{settings_file} holds other data settings: use another --workdir or the same flags")
    settings_file.write_text(json.dumps(settings, indent=2))

    layers = tuple(int(x) for x in args.layers.split(","))
    config = FinetuneConfig(model=args.model, task="generation", train_file=clean_copy(args)[0],
                            train_samples=args.train_samples, eval_samples=args.eval_samples, layers=layers,
                            seed=args.seed)
    task, train, evaluate = task_kind(config).data(config)
    device = GenerationDevice(load_backbone(args.model), task, layers=layers, progress=False)
    every = tuple(range(1, device.backbone.n_layers + 1))
    splits = {"eval": teacher_forced(args, device, evaluate, every, True, "eval")}
    if any(READOUTS[n].fitted_on == "train" for n in names):
        upload, validation = hold_out_indices(len(train), config)
        # Named by the training split's size: every size has its own device hold-out.
        for key, rows in (("upload", upload), ("validation", validation)):
            splits[key] = teacher_forced(args, device, [train[i] for i in rows], layers, False,
                                         f"{key}{len(train)}")
    results = {}
    for name in names:
        results[name] = run_readout(args, name, splits, device.weight)
    eval_tokens = int(splits["eval"]["counts"].sum())
    print(json.dumps({"settings": vars(args), "eval_samples": len(evaluate), "eval_answer_tokens": eval_tokens,
                      "fair_training_samples": len(train), "readouts": results}, indent=2))


if __name__ == "__main__":
    main()
