"""What a generation server learns (SmolLM2-135M, Alpaca): answer tokens from r_t, from the activations
alone, under Gaussian DP on r and under activation protections, with the DP check of each claim.

Every variant is a real fine-tuning run in the `generation` mode, attacked, DP-checked and compared
with the reference rows (zero-shot, generation_local, of the default settings) by the audit's own code
(`secure_assist.audit.runner.audit_variant`): `answer_from_residual` (r_t plus the
public head), `answer_inversion` (activations only: public ridge map of the lowest uploaded layer to
input embeddings) and `generation_model_extraction`. Variants: plain; `gaussian_r` at each ε;
`activation_noise` at each σ/c; plain with fewer, deeper layers. Also reported: the per-sample L2 norm of
the plain run's r (what `--residual-clip` bounds). Each finished variant is kept as <workdir>/<variant>/row.json,
so an interrupted run resumes after it (the reference rows are recomputed). Prints one JSON object. Example:
  OMP_NUM_THREADS=1 python benchmarks/generation_leakage.py --train-file ../shared/data/alpaca/alpaca_5000.jsonl \\
      --train-samples 300 --eval-samples 100 --workdir runs/generation-leakage
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from generation import clean_copy  # sibling script: python puts benchmarks/ on sys.path

# The sibling benchmarks/attacks.py would shadow the `attacks` package the audit imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ATTACKS = ("answer_from_residual", "answer_inversion", "generation_model_extraction")


def variants(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, mechanism, AuditConfig overrides) of every measured variant."""
    out: list[tuple[str, str, dict[str, Any]]] = [("plain", "none", {})]
    out += [(f"gaussian_r ε={e:g}", "gaussian_r", {"epsilon": e}) for e in args.epsilons]
    out += [(f"activation_noise σ/c={s:g}", "activation_noise", {"activation_noise_multiplier": s})
            for s in args.noise_multipliers]
    out += [(f"plain, layers {','.join(map(str, layers))}", "none", {"layers": layers}) for layers in args.deeper]
    return out


def residual_norms(workdir: Path) -> dict[str, float]:
    """Per-sample L2 norms of r (all positions together) in a plain run's server view."""
    from protocol.server.cache import SequenceCache
    from protocol.modes.generation.server import GENERATION_CACHE_FILE

    cache = SequenceCache(workdir / "server" / GENERATION_CACHE_FILE)
    try:
        _, counts, _, residual = cache.load_sequences()
    finally:
        cache.close()
    norms = np.sqrt(np.add.reduceat((residual.astype(np.float64) ** 2).sum(axis=1),
                                    np.concatenate([[0], np.cumsum(counts)[:-1]])))
    return {"mean": float(norms.mean()), "median": float(np.median(norms)), "p90": float(np.percentile(norms, 90)),
            "per_position_mean": float(np.linalg.norm(residual, axis=1).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-file", required=True)
    parser.add_argument("--train-samples", type=int, default=300)
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--layers", default="5,10,15,20,25,30")
    parser.add_argument("--rouge-samples", type=int, default=20)
    parser.add_argument("--epsilons", type=lambda t: [float(x) for x in t.split(",")], default=[1.0, 4.0, 8.0])
    parser.add_argument("--noise-multipliers", type=lambda t: [float(x) for x in t.split(",")],
                        default=[0.02, 0.1, 0.5])
    parser.add_argument("--deeper", type=lambda t: [tuple(int(x) for x in part.split(",")) for part in t.split("/")],
                        default=[(20, 25, 30), (30,)], help="layer subsets separated by '/'")
    parser.add_argument("--dp-releases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="generation-leakage-")

    from protocol.files import write_atomic
    from secure_assist.audit.config import AuditConfig, audit_variants
    from secure_assist.audit.runner import audit_inputs, audit_variant, reference_rows
    from secure_assist.audit.schema import jsonable

    base = AuditConfig(model=args.model, task="generation", train_file=clean_copy(args)[0],
                       train_samples=args.train_samples, eval_samples=args.eval_samples, epochs=args.epochs,
                       layers=tuple(int(x) for x in args.layers.split(",")), rouge_samples=args.rouge_samples,
                       attacks=ATTACKS, dp_releases=args.dp_releases, seed=args.seed, output=args.workdir)
    data, public, _ = audit_inputs(base)
    references = reference_rows(base, data, progress=False)
    rows = []
    for label, mechanism, overrides in variants(args):
        folder = Path(args.workdir) / label.replace(" ", "_").replace(",", "-")
        done = folder / "row.json"  # each finished row is kept: a rerun resumes after the last one
        if not done.is_file():
            config = replace(base, variants=(mechanism,), output=str(folder), **overrides)
            row = jsonable(audit_variant(config, audit_variants(config)[0], data, public, references, progress=False))
            row["label"] = label
            write_atomic(done, json.dumps(row).encode())
        rows.append(json.loads(done.read_text()))
        print(f"[generation_leakage] {label}: {rows[-1].get('verdict') or rows[-1].get('reason')}", file=sys.stderr,
              flush=True)
    plain = Path(rows[0]["workdir"])
    print(json.dumps({"settings": vars(args), "residual_norm_per_sample": residual_norms(plain), "variants": rows},
                     indent=1))


if __name__ == "__main__":
    main()
