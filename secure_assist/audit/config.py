"""The audit's frozen configuration, its fingerprint, and the fine-tuning run of each variant."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, make_dataclass
from pathlib import Path

from protocol.backbone import DEFAULT_BACKBONE
from protocol.errors import UserInputError
from protocol.instructions import GENERATION_TASK
from secure_assist.config import FinetuneConfig, mechanism_config_fields, option
from secure_assist.mechanisms import MECHANISMS

# Sizes chosen so the default audit of SmolLM2-135M finishes within 15 minutes on two cores.
DEFAULT_VARIANTS = ("none", "gaussian", "label_rr", "rotation_mask", "he_ckks")


@dataclass(frozen=True)
class AuditSettings:
    """What an audit runs: the data, the variants (mechanism names), ε, attacks and sizes."""

    model: str = option(DEFAULT_BACKBONE, "backbone (smollm2-135m, tiny-llama, a local HF directory, ...)")
    task: str = option("sst2", "built-in task name, or 'generation' (with --train-file)")
    train_file: str | None = option(None, "instruction data of a generation audit (JSONL, CSV or TSV); rows the "
                                          "device does not upload are the attacker's public data")
    layers: tuple[int, ...] | None = option(None, "comma-separated backbone layers to upload (default: all)")
    max_answer_tokens: int = option(32, "answer tokens per sample (generation)")
    rouge_samples: int = option(100, "evaluation prompts scored with ROUGE-L (generation)")
    train_samples: int = option(400, "number of training samples")
    eval_samples: int = option(200, "number of evaluation samples")
    epochs: int = option(10, "training epochs")
    variants: tuple[str, ...] = option(DEFAULT_VARIANTS, "comma-separated mechanisms to audit "
                                                         "(secure_assist.mechanisms.MECHANISMS)")
    epsilon: float = option(1.0, "target ε of the DP variants (gaussian, label_rr)")
    attacks: tuple[str, ...] | None = option(None, "comma-separated attacks (default: every registered one; "
                                                   "attacks.base.ATTACKS)")
    dp_releases: int = option(2000, "releases per neighbouring input of the distinguishing attack")
    seed: int = option(0, "seed of the data, the variants and the attacks")
    output: str = option("runs/audit", "folder for the variants' runs and report.{json,md,html}")

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in MECHANISMS]
        if unknown or not self.variants:
            raise UserInputError(f"unknown variant(s) {unknown or '(none given)'}; choose from {sorted(MECHANISMS)}")
        for name in ("train_samples", "eval_samples", "epochs", "dp_releases", "max_answer_tokens", "rouge_samples"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.epsilon > 0:
            raise UserInputError(f"epsilon must be positive, got {self.epsilon}")


AuditConfig = make_dataclass(
    "AuditConfig", mechanism_config_fields(defined={f.name for f in fields(AuditSettings)}), bases=(AuditSettings,),
    frozen=True, namespace={"__doc__": "`AuditSettings` plus every mechanism's parameters (generated), passed to "
                                       "each variant's run.", "__module__": __name__})


def fingerprint(config: AuditConfig) -> str:
    """sha256 of the config's canonical JSON (the output folder excluded: it does not change results)."""
    values = {k: v for k, v in asdict(config).items() if k != "output"}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def variant_finetune_config(config: AuditConfig, variant: str) -> FinetuneConfig:
    """The `secure-assist finetune` configuration of one variant (same data and seed for all)."""
    parameters = {name: getattr(config, name) for name, *_ in mechanism_config_fields()}
    return FinetuneConfig(model=config.model, task=config.task, train_file=config.train_file,
                          train_samples=config.train_samples, eval_samples=config.eval_samples, epochs=config.epochs,
                          seed=config.seed, layers=config.layers, max_answer_tokens=config.max_answer_tokens,
                          rouge_samples=config.rouge_samples,
                          workdir=str(Path(config.output) / "variants" / variant), mechanism=(variant,),
                          epsilon=config.epsilon,  # read by the DP mechanisms, ignored by the others
                          mechanism_seed=config.seed,
                          # Every classification variant runs over the same data: one backbone pass.
                          reuse_forwards=config.task != GENERATION_TASK,
                          **{k: v for k, v in parameters.items() if k != "epsilon"})
