"""Cost-matched PAE vs local LoRA: dev accuracy against device seconds and upload bytes, with the states of
the last k prompt positions uploaded instead of the pivot's alone, and each k's leakage.

Today PAE uploads one state per layer at the pivot (k = 1). Here the device uploads, per layer, the states of the
last k prompt positions (k in --positions), through the real protocol: `Upload` messages to the real
`SideTuningServer` in process, the server's own training recipe, φ fetched and evaluated on the device. Positions are
laid out as extra entries of the layer axis *(benchmark choice)*: the pivot's states keep layer numbers 1..L, the
state j positions before it gets j·L + 1..j·L + L, and the entries run from the earliest position to the pivot, so
the side network's gated chain ends at the pivot's last layer (its read-out) and every attack that reads "layer L"
reads the pivot's state, as in plain PAE. Leakage per k: the activations-only label probe (`model_completion_k128`,
balanced accuracy), the zero-shot head, and input inversion (`learned_inversion`, and `candidate_matching` against
a pool of the subsample's texts and 1,000 public ones), on a seed-fixed subsample of the uploads, run through the
auditor on each k's server view with public texts encoded the same way; measured at the smallest training size
(what one upload reveals does not depend on how many there are; --no-leakage skips them).

Device seconds: PAE's are the forward passes over the training set (the same for every k: one pass yields every
position), measured in this process; LoRA's are its training (forward + backward, 1 epoch), measured beside it.

    OMP_NUM_THREADS=1 python benchmarks/cost_matched.py --sizes 2000,8000 --positions 1,2,4,8 \\
        --workdir runs/cost_matched

Resumable: every finished point is kept as <workdir>/points/<name>.json; prints one JSON object and writes
<workdir>/cost_matched.png (accuracy vs device seconds and vs upload bytes per sample).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

# benchmarks/attacks.py would shadow the `attacks` package this script runs; it needs no sibling script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ATTACKS = ("public_head_zero_shot", "model_completion_k128", "learned_inversion", "candidate_matching")


def last_states(backbone, task, texts: list[str], positions: int, label_ids: list[int]):
    """(n, positions, L, d) hidden states of the last `positions` prompt tokens (index 0: the pivot) and z_b."""
    from protocol.device.forward_device import encode_prompts

    encoded = encode_prompts(backbone, task, texts)
    with torch.inference_mode():
        out = backbone.model.base_model(**encoded, output_hidden_states=True)
        pivot = encoded["attention_mask"].sum(dim=1) - 1
        rows = torch.arange(len(texts), device=pivot.device)
        layers = range(1, backbone.n_layers + 1)
        states = torch.stack([torch.stack([out.hidden_states[i][rows, (pivot - j).clamp_min(0)] for i in layers], 1)
                              for j in range(positions)], 1)
        logits = backbone.model.get_output_embeddings()(out.hidden_states[-1][rows, pivot])[:, label_ids]
    return states.to(torch.float16).cpu(), logits.float().cpu()


class Forwards:
    """The device's forward passes over a set of texts (last K positions), kept in the workdir."""

    def __init__(self, backbone, task, positions: int, path: Path, texts: list[str], batch_size: int = 16) -> None:
        from protocol.wire.codec import decode, encode

        if path.is_file():
            tensors, meta = decode(path.read_bytes(), 64 * 2**30)
            self.states, self.logits = torch.from_numpy(tensors["states"]), torch.from_numpy(tensors["logits"])
            self.seconds = float(meta["forward_seconds"])
            assert json.loads(meta["texts"]) == texts, f"{path} holds other texts"
        else:
            label_ids = backbone.label_token_ids(task.label_words)
            parts, start = [], time.perf_counter()
            for i in range(0, len(texts), batch_size):
                parts.append(last_states(backbone, task, texts[i:i + batch_size], positions, label_ids))
            self.seconds = time.perf_counter() - start
            self.states = torch.cat([p[0] for p in parts])
            self.logits = torch.cat([p[1] for p in parts])
            path.write_bytes(encode({"states": self.states.numpy(), "logits": self.logits.numpy()},
                                    {"forward_seconds": repr(self.seconds), "texts": json.dumps(texts)}))
        self.row = {t: i for i, t in enumerate(texts)}


def layout(k: int, n_layers: int) -> tuple[list[tuple[int, int]], tuple[int, ...]]:
    """(position offset, layer) of each entry, earliest position first, and the entries' layer numbers."""
    entries = [(j, layer) for j in range(k - 1, -1, -1) for layer in range(1, n_layers + 1)]
    return entries, tuple(j * n_layers + layer for j, layer in entries)


def arranged(forwards: Forwards, texts: list[str], entries: list[tuple[int, int]]) -> torch.Tensor:
    """(n, len(entries), d) states of `texts` in the upload layout."""
    index = torch.tensor([forwards.row[t] for t in texts])
    states = forwards.states[index]
    return torch.stack([states[:, j, layer - 1] for j, layer in entries], 1)


def run_point(args, n: int, k: int, pools: dict, train, dev, public_examples, backbone, leakage: bool) -> dict:
    from protocol.wire.channel import InProcessChannel
    from protocol.device.forward_device import new_sample_ids, prediction_difference
    from protocol.wire.messages import FetchWeights, SideWeights, TrainReport, TrainUntil, Upload, expect
    from protocol.server.training_settings import ServerTraining
    from protocol.server.side_tuning import SideTuningServer
    from protocol.model.side_network import network_from_arrays
    from secure_assist.training.workdir import DEVICE_DIR, GROUND_TRUTH_FILE, SERVER_DIR, prepare_workdir, write_ground_truth

    workdir = Path(args.workdir) / "views" / f"n{n}_k{k}"
    prepare_workdir(workdir, overwrite=True)
    entries, layers = layout(k, backbone.n_layers)
    subset = train[:n]
    ids = new_sample_ids(n)
    write_ground_truth(workdir / DEVICE_DIR / GROUND_TRUTH_FILE, ids, subset)
    server = SideTuningServer(workdir / SERVER_DIR, ServerTraining(seed=args.seed))
    channel = InProcessChannel(server)
    start = time.perf_counter()
    for i in range(0, n, 16):
        chunk = subset[i:i + 16]
        texts = [e.text for e in chunk]
        logits = pools["train"].logits[torch.tensor([pools["train"].row[t] for t in texts])]
        delta = prediction_difference(logits, torch.tensor([e.label for e in chunk]))
        channel.request(Upload(sample_ids=ids[i:i + 16], activations=arranged(pools["train"], texts, entries).numpy(),
                               delta=delta.numpy().astype(np.float32), layers=layers))
    expect(channel.request(TrainUntil(epochs_total=args.epochs)), TrainReport)
    weights = expect(channel.request(FetchWeights()), SideWeights)
    server_seconds = time.perf_counter() - start
    server.close()
    network = network_from_arrays(weights.state, weights.architecture).eval()
    dev_texts = [e.text for e in dev]
    with torch.inference_mode():
        side = network(arranged(pools["dev"], dev_texts, entries).float()).numpy()
    probs = torch.softmax(pools["dev"].logits, -1).numpy()
    labels = np.array([e.label for e in dev])
    point = {"kind": "pae", "train_samples": n, "positions": k, "accuracy": float(((probs + side).argmax(1) == labels).mean()),
             "zero_shot_accuracy": float((probs.argmax(1) == labels).mean()),
             "upload_bytes_per_sample": channel.bytes_up / n,
             "device_seconds": pools["train"].seconds * n / len(train), "server_seconds": server_seconds}
    if leakage:
        point["attacks"] = leakage_of(args, workdir, ids, subset, entries, layers, pools, public_examples)
    return point


def leakage_of(args, workdir: Path, ids, subset, entries, layers, pools, public_examples) -> dict:
    """The attacks of ATTACKS on one k's server view (inversion on a subsample)."""
    from attacks.base import PublicFeatures, PublicKnowledge
    from protocol.data.tasks import SST2
    from secure_assist.audit.sampling import sample_ids
    from secure_assist.audit.auditor import run_attack

    def features(texts: list[str], wanted: tuple[int, ...]) -> PublicFeatures:
        source = [pools["public"] if t in pools["public"].row else pools["train"] for t in texts]
        rows = [arranged(s, [t], entries)[0] for s, t in zip(source, texts)]
        columns = [layers.index(v) for v in wanted]
        return PublicFeatures(activations=torch.stack(rows)[:, columns].float().numpy(),
                              label_logits=torch.stack([s.logits[s.row[t]] for s, t in zip(source, texts)]).numpy())

    hex_ids = [bytes(r).hex() for r in ids]
    keep = sample_ids(hex_ids, args.attack_samples, args.seed)
    labeled = tuple(public_examples[:128])
    unlabeled = tuple(e.text for e in public_examples[128:1128])
    suspects = tuple(e.text for e, sid in zip(subset, hex_ids) if sid in keep)
    public = PublicKnowledge(backbone_name=args.model, task=SST2, labeled=labeled, unlabeled_texts=unlabeled,
                             candidate_texts=suspects + unlabeled, features=features, seed=args.seed)
    out = {}
    for name in ATTACKS:
        report = run_attack(name, workdir, public=public, backbone_name=args.model, task=SST2, seed=args.seed,
                            progress=False, keep=keep if name in ("learned_inversion", "candidate_matching") else None)
        out[name] = {key: report[key] for key in ("balanced_accuracy", "balanced_accuracy_ci95", "token_f1",
                                                  "token_f1_ci95", "exact_match", "n") if key in report}
    return out


def run_lora(args, n: int, train, dev, backbone) -> dict:
    from secure_assist.references.local_lora import LoraSettings, run_local_lora
    from protocol.data.tasks import SST2
    from secure_assist.training.resources import PeakMemory

    with PeakMemory() as memory:
        run = run_local_lora(backbone, SST2, train[:n], dev, LoraSettings(seed=args.seed), progress=False)
    labels = np.array([e.label for e in dev])
    return {"kind": "lora", "train_samples": n, "accuracy": float((run.probabilities.argmax(1) == labels).mean()),
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
    from protocol.model.backbone import load_backbone
    from protocol.data.tasks import SST2, builtin_split, sample

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sizes", default="2000,8000", help="comma-separated training sample counts")
    parser.add_argument("--eval-samples", type=int, default=None, help="default: the full 872-sample dev set")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--positions", default="1,2,4,8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attack-samples", type=int, default=300)
    parser.add_argument("--no-lora", dest="lora", action="store_false")
    parser.add_argument("--no-leakage", dest="leakage", action="store_false",
                        help="skip the attacks (for a workdir whose sizes were already measured for leakage elsewhere)")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    sizes = [int(v) for v in args.sizes.split(",")]
    ks = [int(v) for v in args.positions.split(",")]
    workdir = Path(args.workdir)
    (workdir / "points").mkdir(parents=True, exist_ok=True)
    backbone = load_backbone(args.model)
    pool = builtin_split("sst2", "train")
    train = sample(pool, max(sizes), args.seed)  # every smaller size is a prefix: one forward pass serves all
    dev = builtin_split("sst2", "dev")
    dev = sample(dev, args.eval_samples, args.seed + 1) if args.eval_samples else dev
    used = {e.text for e in train}
    public_examples = [e for e in sample(pool, None, args.seed + 1000) if e.text not in used][:1128]
    pools = {name: Forwards(backbone, SST2, max(ks), workdir / f"forward_{name}.safetensors",
                            [e.text for e in examples])
             for name, examples in (("train", train), ("dev", dev), ("public", public_examples))}
    points = []
    for n in sizes:
        for k in ks:
            path = workdir / "points" / f"pae_n{n}_k{k}.json"
            if not path.is_file():
                point = run_point(args, n, k, pools, train, dev, public_examples, backbone,
                                  args.leakage and n == min(sizes))
                path.write_text(json.dumps(point))
            points.append(json.loads(path.read_text()))
        path = workdir / "points" / f"lora_n{n}.json"
        if args.lora and not path.is_file():
            path.write_text(json.dumps(run_lora(args, n, train, dev, backbone)))
        if path.is_file():
            points.append(json.loads(path.read_text()))
    plot(points, workdir / "cost_matched.png")
    print(json.dumps({"forward_seconds_train": pools["train"].seconds, "train_pool": len(train), "points": points},
                     indent=1))


if __name__ == "__main__":
    main()
