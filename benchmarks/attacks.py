"""Attack benchmark: what an honest-but-curious server learns, printed as JSON.

Sections:
  pae             every registered attack on a real PAE run (`secure-assist finetune` workdir)
  mechanisms      label attacks on views whose uploads went through each Δ mechanism
                  (built from the device-feature cache: same activations, protected Δ),
                  and the distinguishing attack's empirical ε for the DP ones
  reconstruction  full-activation inversion and gradient attacks on MobiLLM-style and
                  split-learning runs over a small subset (pivot-only rows come from `pae`)

    python benchmarks/attacks.py --workdir runs/plain [--quick] [--sections pae,mechanisms,reconstruction]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the `attacks` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import torch

from attacks.base import NotApplicable

from attacks.registry import all_attacks
from protocol.model.backbone import load_backbone
from secure_assist.references.mobillm import run_mobillm
from secure_assist.references.split_learning import run_split_learning
from protocol.device.forward_device import DeviceRole, new_sample_ids
from protocol.device.features import encode_dataset
from protocol.data.tasks import SST2, Example, builtin_split, sample
from protocol.server.transcript import INBOUND, ServerView, TranscriptWriter
from protocol.wire.messages import encode_message
from secure_assist.audit.dp_check import empirical_epsilon, release_pair
from secure_assist.audit.auditor import load_ground_truth, run_attack, upload_texts
from secure_assist.audit.public_knowledge import default_public_knowledge
from secure_assist.training.workdir import DEVICE_DIR, GROUND_TRUTH_FILE, SERVER_DIR, write_ground_truth
from secure_assist.mechanisms import MECHANISMS, mechanism_parameters

LABEL_ATTACKS = ("delta_argmax", "public_head", "clustering_delta", "public_head_zero_shot",
                 "clustering_activations", "model_completion_k8", "model_completion_k32", "model_completion_k128")
MECHANISM_RUNS = (("gaussian", 1.0), ("gaussian", 4.0), ("label_rr", 1.0), ("label_rr", 4.0),
                  ("rotation_mask", None), ("he_ckks", None))
KEEP = ("accuracy", "ci95", "prior_baseline", "auc", "agreement", "agreement_ci95", "backbone_only_agreement",
        "token_precision", "token_recall", "token_f1", "exact_match", "rouge_l", "position_token_accuracy", "n",
        "activations_only", "k", "layer")


def _row(name: str, workdir: Path, public: Any) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        report = run_attack(name, workdir, public=public, progress=False)
    except NotApplicable as exc:
        return {"attack": name, "not_applicable": str(exc)}
    return {"attack": name, **{k: v for k, v in report.items() if k in KEEP},
            "seconds": round(time.perf_counter() - start, 1)}


def pae_section(workdir: Path) -> list[dict[str, Any]]:
    """Every registered attack on the real PAE run."""
    truth = load_ground_truth(workdir)
    public = default_public_knowledge("smollm2-135m", SST2, upload_texts(truth), progress=False)
    return [_row(name, workdir, public) for name in sorted(all_attacks())]


def _protected_view(target: Path, mechanism: str, epsilon: float | None, device: DeviceRole,
                    train: list[Example]) -> dict[str, Any]:
    """Uploads of the cached device outputs, passed through one mechanism, recorded as a view."""
    pivots = encode_dataset(device, train)
    cls = MECHANISMS[mechanism]
    protection = cls(mechanism_parameters(cls, {"epsilon": epsilon}), np.random.default_rng(0))
    writer = TranscriptWriter(target / SERVER_DIR)
    ids = new_sample_ids(len(train))
    labels = np.array([e.label for e in train])
    for start in range(0, len(train), 64):
        part = slice(start, start + 64)
        chunk = train[part]
        batch = type(pivots)(activations=pivots.activations[part], label_logits=pivots.label_logits[part])
        upload = device.make_upload(chunk, batch, ids[part])
        for message in protection.transform(upload, labels[part], pivots.label_logits[part].numpy()):
            writer.record(INBOUND, encode_message(message))
    for message in protection.flush():
        writer.record(INBOUND, encode_message(message))
    writer.close()
    write_ground_truth(target / DEVICE_DIR / GROUND_TRUTH_FILE, ids, train)
    return protection.describe()


def mechanisms_section(releases: int) -> list[dict[str, Any]]:
    """Label attacks per mechanism, plus empirical ε for the DP ones."""
    device = DeviceRole(load_backbone(), SST2, progress=False)
    # The standard 2,000-sample set: its device outputs are cached, so only the attacks cost time.
    train = sample(builtin_split("sst2", "train"), 2000, 0)
    rows = []
    for mechanism, epsilon in MECHANISM_RUNS:
        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder)
            described = _protected_view(target, mechanism, epsilon, device, train)
            public = default_public_knowledge("smollm2-135m", SST2, upload_texts(load_ground_truth(target)),
                                              progress=False)
            row: dict[str, Any] = {"mechanism": mechanism, "epsilon": epsilon,
                                   "claimed": {k: v for k, v in described.items() if k in ("guarantee", "epsilon")},
                                   "attacks": [_row(name, target, public) for name in LABEL_ATTACKS]}
        if mechanism in ("gaussian", "label_rr"):
            cls = MECHANISMS[mechanism]
            pair = release_pair(device, cls, train, releases)
            row["distinguishing"] = empirical_epsilon(cls, mechanism_parameters(cls, {"epsilon": epsilon}), pair,
                                                      releases)
        rows.append(row)
    return rows


def reconstruction_section(n_samples: int) -> dict[str, Any]:
    """MobiLLM-style and split-learning views of the same subset, attacked per position."""
    train = sample(builtin_split("sst2", "train"), 2000, 0)[:n_samples]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        mobillm = Path(folder) / "mobillm"
        run_mobillm(load_backbone(), SST2, train, train[:1], mobillm / SERVER_DIR, progress=False)
        # The upload order is the training order; the harness (device side) records which id was which.
        ids = full_activation_data_ids(mobillm)
        write_ground_truth(mobillm / DEVICE_DIR / GROUND_TRUTH_FILE, ids, train)
        public = default_public_knowledge("smollm2-135m", SST2, upload_texts(load_ground_truth(mobillm)),
                                          progress=False)
        out["mobillm"] = [_row("full_activation_inversion", mobillm, public)]
        split = Path(folder) / "split"
        run = run_split_learning(load_backbone(), load_backbone(), SST2, train, split / SERVER_DIR,
                                 cut_layer=1, progress=False)
        write_ground_truth(split / DEVICE_DIR / GROUND_TRUTH_FILE, run.sample_ids, train)
        out["split_learning"] = [_row(name, split, public) for name in
                                 ("full_activation_inversion", "gradient_norm", "gradient_cosine", "delta_argmax")]
    return out


def full_activation_data_ids(workdir: Path) -> np.ndarray:
    """Sample ids of a one-epoch MobiLLM-style view in upload order."""
    rows = [m.sample_ids for m in (r.message for r in ServerView(workdir / SERVER_DIR).messages())
            if hasattr(m, "labels")]
    return np.concatenate(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/plain", help="a `secure-assist finetune` run directory")
    parser.add_argument("--sections", default="pae,mechanisms,reconstruction")
    parser.add_argument("--quick", action="store_true", help="small subsets (smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sections = args.sections.split(",")
    result: dict[str, Any] = {"quick": args.quick}
    if "pae" in sections:
        result["pae"] = pae_section(Path(args.workdir))
    if "mechanisms" in sections:
        result["mechanisms"] = mechanisms_section(2000 if args.quick else 20000)
    if "reconstruction" in sections:
        result["reconstruction"] = reconstruction_section(16 if args.quick else 100)
    print(json.dumps(result, indent=1, default=float))
    inconsistent = [row["mechanism"] for row in result.get("mechanisms", [])
                    if not row.get("distinguishing", {"consistent": True})["consistent"]]
    if inconsistent:
        print(f"error: empirical ε lower bound exceeds the claimed ε for {inconsistent}", file=sys.stderr)
    return 1 if inconsistent else 0


if __name__ == "__main__":
    sys.exit(main())
