"""Exposure of planted secrets (the "secret sharer" test) under every deployed model of a generation audit:
the backbone alone (`zero_shot`), PAE (`none`), `device_local` (generation_local) and local LoRA.

One real audit (`secure_assist.audit.runner.run_audit`) with `--canaries K`: K random six-digit secrets,
each planted in `--canary-repetitions` training answers ("The secret code is 418203."), scored against
never-planted secrets of the same format (`secure_assist.canaries`). Only `answer_from_residual` attacks the
view (the other attacks do not touch the exposure). Prints one JSON object: per row the planted secrets'
exposures (sampled and extrapolated), the never-planted secrets' mean and 95th percentile, the one-sided
Mann-Whitney p-value, the copies each model trained on, and the audit's wall time. Example (the issue's full
setting; local LoRA alone takes about an hour on two CPU cores):
  OMP_NUM_THREADS=2 python benchmarks/canaries.py --train-file ../shared/data/alpaca/alpaca_5000.jsonl \\
      --train-samples 2000 --eval-samples 500 --workdir runs/canaries
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from generation import clean_copy  # sibling script: python puts benchmarks/ on sys.path

# The sibling benchmarks/attacks.py would shadow the `attacks` package the audit imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

SUMMARY_KEYS = ("planted_mean_exposure", "planted_mean_exposure_extrapolated", "null_mean_exposure",
                "null_p95_exposure", "null_mean_exposure_extrapolated", "null_p95_exposure_extrapolated",
                "planted_above_null_p_exposure", "planted_above_null_p_exposure_extrapolated")


def row_exposures(row: dict[str, Any]) -> dict[str, Any]:
    """What the benchmark keeps of one audit row's canary report."""
    canaries = row["canaries"]
    return {**{k: canaries[k] for k in SUMMARY_KEYS},
            "planted": [{k: p[k] for k in ("secret", "exposure", "exposure_extrapolated", "copies_trained")}
                        for p in canaries["planted"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-file", required=True)
    parser.add_argument("--train-samples", type=int, default=300)
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--layers", default="5,10,15,20,25,30")
    parser.add_argument("--rouge-samples", type=int, default=20)
    parser.add_argument("--canaries", type=int, default=10)
    parser.add_argument("--canary-repetitions", type=int, default=1)
    parser.add_argument("--no-lora", action="store_true", help="leave out the local LoRA row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="canaries-")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)

    from secure_assist.audit.config import AuditConfig
    from secure_assist.audit.runner import run_audit

    config = AuditConfig(model=args.model, task="generation", train_file=clean_copy(args)[0],
                         train_samples=args.train_samples, eval_samples=args.eval_samples, epochs=args.epochs,
                         layers=tuple(int(x) for x in args.layers.split(",")), rouge_samples=args.rouge_samples,
                         canaries=args.canaries, canary_repetitions=args.canary_repetitions,
                         variants=("none",), attacks=("answer_from_residual",), with_lora=not args.no_lora,
                         seed=args.seed, output=args.workdir)
    report = run_audit(config, progress=False)
    rows = [r for r in report["references"] + report["variants"] if "canaries" in r]
    settings = {k: v for k, v in rows[0]["canaries"].items() if k not in SUMMARY_KEYS + ("planted", "null")}
    print(json.dumps({"settings": vars(args), "canary_settings": settings, "wall_seconds": report["wall_seconds"],
                      "rows": {r["variant"]: {"utility": r["utility"][r["utility"]["metric"]], **row_exposures(r)}
                               for r in rows}}, indent=1))


if __name__ == "__main__":
    main()
