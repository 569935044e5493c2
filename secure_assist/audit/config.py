"""The audit's frozen configuration, its fingerprint, and the fine-tuning run of each variant."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from protocol.backbone import DEFAULT_BACKBONE
from protocol.errors import UserInputError
from secure_assist.config import (
    FinetuneConfig, check_mechanism_parameters, mechanism_config_fields, option, with_mechanism_parameters,
)
from secure_assist.mechanisms import MECHANISMS

# Sizes chosen so the default audit of SmolLM2-135M finishes within 15 minutes on two cores.
DEFAULT_VARIANTS = ("none", "gaussian", "label_rr", "rotation_mask", "he_ckks")


@dataclass(frozen=True)
class AuditSettings:
    """What an audit runs: the data, the variants (mechanism names), ε, attacks and sizes."""

    model: str = option(DEFAULT_BACKBONE, "backbone (smollm2-135m, tiny-llama, a local HF directory, ...)")
    task: str = option("sst2", "built-in task name")
    train_samples: int = option(400, "number of training samples")
    eval_samples: int = option(200, "number of evaluation samples")
    epochs: int = option(10, "training epochs")
    variants: tuple[str, ...] = option(DEFAULT_VARIANTS, "comma-separated mechanisms to audit "
                                                         "(secure_assist.mechanisms.MECHANISMS; '+' composes, e.g. "
                                                         "activation_rotation+he_ckks)")
    epsilon: float = option(1.0, "target ε of the DP variants (gaussian, label_rr)")
    attacks: tuple[str, ...] | None = option(None, "comma-separated attacks (default: every registered one; "
                                                   "attacks.base.ATTACKS)")
    dp_releases: int = option(2000, "releases per neighbouring input of the distinguishing attack")
    seed: int = option(0, "seed of the data, the variants and the attacks")
    output: str = option("runs/audit", "folder for the variants' runs and report.{json,md,html}")

    def __post_init__(self) -> None:
        unknown = [name for v in self.variants for name in v.split("+") if name not in MECHANISMS]
        if unknown or not self.variants:
            raise UserInputError(f"unknown variant(s) {unknown or '(none given)'}; choose from {sorted(MECHANISMS)}")
        for name in ("train_samples", "eval_samples", "epochs", "dp_releases"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.epsilon > 0:
            raise UserInputError(f"epsilon must be positive, got {self.epsilon}")
        check_mechanism_parameters(self)


AuditConfig = with_mechanism_parameters(
    AuditSettings, "AuditConfig", "`AuditSettings` plus every mechanism's parameters (generated), passed to each "
                                  "variant's run.")


def fingerprint(config: AuditConfig) -> str:
    """sha256 of the config's canonical JSON (the output folder excluded: it does not change results)."""
    values = {k: v for k, v in asdict(config).items() if k != "output"}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def variant_finetune_config(config: AuditConfig, variant: str) -> FinetuneConfig:
    """The `secure-assist finetune` configuration of one variant (same data and seed for all)."""
    parameters = {name: getattr(config, name) for name, *_ in mechanism_config_fields()}
    return FinetuneConfig(model=config.model, task=config.task, train_samples=config.train_samples,
                          eval_samples=config.eval_samples, epochs=config.epochs, seed=config.seed,
                          workdir=str(Path(config.output) / "variants" / variant), mechanism=tuple(variant.split("+")),
                          epsilon=config.epsilon,  # read by the DP mechanisms, ignored by the others
                          mechanism_seed=config.seed,
                          reuse_forwards=True,  # every variant runs over the same data: one backbone pass
                          **{k: v for k, v in parameters.items() if k != "epsilon"})
