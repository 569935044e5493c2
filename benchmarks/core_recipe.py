"""Which default moves PAE's accuracy: the SST-2 prompt, the server recipe, or both.

Runs `run_finetune` (device + in-process server, SmolLM2-135M, 2,000 seed-fixed SST-2
training samples, the full dev set) for each prompt × recipe, side by side in one run.
The device's forward passes are cached per prompt (`reuse_forwards`), so each prompt
pays for its forwards once. Recipes:
  earlier   AdamW weight decay 0.01, adapters at the full learning rate, constant rate
  default   the current `ServerTraining` defaults (weight decay 1.0, adapters at 0.01×, cosine decay)
Prints one JSON object. Example:
  python benchmarks/core_recipe.py --seeds 0
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from core_pae import add_run_arguments  # sibling script: python puts benchmarks/ on sys.path
from protocol.data.tasks import SST2

PROMPTS = {"earlier": "Review: {text}\nSentiment:", "default": SST2.template}
RECIPES = {
    "earlier": {"weight_decay": 0.01, "adapter_lr_scale": 1.0, "cosine_decay": False},
    "default": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--seeds", default="0", help="comma-separated; each seed draws its own training subset")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    from secure_assist.config import FinetuneConfig
    from secure_assist.finetune import run_finetune

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="core-recipe-"))
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for prompt, template in PROMPTS.items():
            for recipe, overrides in RECIPES.items():
                config = FinetuneConfig(model=args.model, template=template, train_samples=args.train_samples,
                                        eval_samples=args.eval_samples, epochs=args.epochs, seed=seed,
                                        reuse_forwards=True, workdir=str(workdir / f"{prompt}-{recipe}-{seed}"),
                                        **overrides)
                summary = run_finetune(config, progress=False, overwrite=True)
                runs.append({"prompt": prompt, "template": template,
                             "recipe": recipe, "seed": seed, "accuracy": summary.metrics["accuracy"],
                             "zero_shot_accuracy": summary.metrics["zero_shot_accuracy"],
                             "server_seconds": summary.server_seconds})
                print(json.dumps(runs[-1]), flush=True)
    print(json.dumps({"runs": runs, "settings": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
