"""The audit's frozen configuration, its fingerprint, and the fine-tuning run of each variant."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from protocol.backbone import DEFAULT_BACKBONE
from protocol.errors import UserInputError
from secure_assist.config import FinetuneConfig
from secure_assist.mechanisms import MECHANISMS

# Sizes chosen so the default audit of SmolLM2-135M finishes within 15 minutes on two cores.
DEFAULT_VARIANTS = ("none", "gaussian", "label_rr", "rotation_mask", "he_ckks")


@dataclass(frozen=True)
class AuditConfig:
    """What an audit runs: the data, the variants (mechanism names), ε, attacks and sizes."""

    model: str = DEFAULT_BACKBONE
    task: str = "sst2"
    train_samples: int = 400
    eval_samples: int = 200
    epochs: int = 10
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    epsilon: float = 1.0
    attacks: tuple[str, ...] | None = None  # None: every registered attack
    dp_releases: int = 2000  # releases per neighbouring input of the distinguishing attack
    seed: int = 0
    output: str = "runs/audit"

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in MECHANISMS]
        if unknown or not self.variants:
            raise UserInputError(f"unknown variant(s) {unknown or '(none given)'}; choose from {sorted(MECHANISMS)}")
        for name in ("train_samples", "eval_samples", "epochs", "dp_releases"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.epsilon > 0:
            raise UserInputError(f"epsilon must be positive, got {self.epsilon}")


def fingerprint(config: AuditConfig) -> str:
    """sha256 of the config's canonical JSON (the output folder excluded: it does not change results)."""
    values = {k: v for k, v in asdict(config).items() if k != "output"}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def variant_finetune_config(config: AuditConfig, variant: str) -> FinetuneConfig:
    """The `secure-assist finetune` configuration of one variant (same data and seed for all)."""
    return FinetuneConfig(model=config.model, task=config.task, train_samples=config.train_samples,
                          eval_samples=config.eval_samples, epochs=config.epochs, seed=config.seed,
                          workdir=str(Path(config.output) / "variants" / variant), mechanism=(variant,),
                          epsilon=config.epsilon,  # read by the DP mechanisms, ignored by the others
                          mechanism_seed=config.seed,
                          reuse_forwards=True)  # every variant runs over the same data: one backbone pass
