"""The audit's frozen configuration, its variants, its fingerprint, and the fine-tuning run of each row.

`AuditConfig` is generated from `FinetuneConfig` itself: every data, model, training and
mechanism field of a fine-tuning run is an audit field with the same name, type, default
and help (so `audit` takes every `finetune` flag and `--config` key), minus the fields
that differ per variant (the mechanism, the mode, the work directory), plus the audit's
own settings (`AuditSettings`).
"""

from __future__ import annotations

import hashlib
import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from protocol.errors import UserInputError
from protocol.data.instructions import GENERATION_TASK
from secure_assist.config import FinetuneConfig, option, result_values
from secure_assist.mechanism_parameters import MECHANISM_PARAMETERS, uses_epsilon

# One variant per protection of Δ; label_rr twice: at ε = 1 (the DP setting at ε ≤ 1, with gaussian) and
# at ε = 4, which keeps enough label signal to beat zero-shot measurably. rotation_mask (obfuscation, broken by
# clustering: BENCHMARKS.md, "Attacks") is left to --variants so that the default fits 15 minutes on two cores.
DEFAULT_VARIANTS = ("none", "gaussian", "label_rr", "label_rr@4", "he_ckks")
# Generation runs protect r, not Δ: its Gaussian mechanism at the DP setting ε = 1 and at ε = 8.
GENERATION_DEFAULT_VARIANTS = ("none", "gaussian_r", "gaussian_r@8")
# With --devices N > 1 the variants are the pooled rows' protections (DESIGN.md §10): plain, label RR at ε = 4 and
# Gaussian DP at ε = 1 (CKKS does not pool: ciphertexts under different device keys cannot be added).
DEVICES_DEFAULT_VARIANTS = ("none", "label_rr@4", "gaussian")
# The many-device audit's federated-averaging rows (secure_assist.federated.settings.VARIANTS, which imports Flower).
FEDAVG_VARIANTS = ("plain", "dp", "secagg")
# Fields of a fine-tuning run that the audit sets per row (from the variant and --output) or, with --devices,
# per device of a row (which device, and whether it poisons).
PER_ROW_FIELDS = ("mechanism", "mode", "workdir", "reuse_forwards", "mechanism_seed", "device_index", "flip_labels",
                  "keep_received_model")
# The DP variants' ε unless a variant names its own (`label_rr@4`).
DEFAULT_EPSILON = 1.0
# The reference modes that upload nothing (protocol.modes.registry.MODES), by task kind.
DEVICE_LOCAL, GENERATION_LOCAL = "device_local", "generation_local"


@dataclass(frozen=True)
class Variant:
    """One audited protection: a mechanism (or several joined by '+') and, for mechanisms that
    read it, its ε."""

    mechanism: str
    epsilon: float | None = None

    @property
    def label(self) -> str:
        """The variant's name in reports and its folder name: `label_rr@4`, `none`."""
        return self.mechanism if self.epsilon is None else f"{self.mechanism}@{self.epsilon:g}"


def parse_variant(text: str, default_epsilon: float | None) -> Variant:
    """`NAME` or `NAME@EPSILON` (the mechanism must read ε to take one)."""
    name, at, value = text.strip().partition("@")
    names = name.split("+")
    if not all(n in MECHANISM_PARAMETERS for n in names):
        raise UserInputError(f"unknown variant {text!r}; choose mechanisms from {sorted(MECHANISM_PARAMETERS)} "
                             f"('+' composes them), optionally with @ε (e.g. label_rr@4)")
    if not any(uses_epsilon(n) for n in names):
        if at:
            raise UserInputError(f"variant {text!r}: mechanism {name!r} takes no ε")
        return Variant(name)
    if not at:
        return Variant(name, default_epsilon)
    try:
        epsilon = float(value)
    except ValueError:
        epsilon = math.nan
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise UserInputError(f"variant {text!r}: ε must be a positive number")
    return Variant(name, epsilon)


@dataclass(frozen=True)
class AuditSettings:
    """What an audit adds to a fine-tuning run's settings: the variants, the attacks, the
    attacker's public data, the reference rows and where the reports go."""

    variants: tuple[str, ...] = option((), "comma-separated variants: a mechanism "
                                       f"({', '.join(MECHANISM_PARAMETERS)}) or several joined by '+' "
                                       "(activation_rotation+he_ckks), optionally with its ε as NAME@ε (label_rr@4); "
                                       f"default {','.join(DEFAULT_VARIANTS)} (--task generation: "
                                       f"{','.join(GENERATION_DEFAULT_VARIANTS)})")
    attacks: tuple[str, ...] | None = option(None, "comma-separated attacks (default: every registered one; "
                                                   "attacks.registry.ATTACKS)")
    public_file: str | None = option(None, "the attacker's public data (a data file with the task's columns): "
                                           "labeled examples, unlabeled text and candidate texts (default: unused "
                                           "rows of the built-in task, or of --train-file for custom data and "
                                           "generation)")
    with_lora: bool = option(False, "add the local LoRA reference row (trains LoRA on the device: slow)")
    attack_samples: int = option(200, "uploaded samples the reconstruction attacks read (a seed-fixed subsample, "
                                      "CIs over it); label attacks read every sample")
    dp_releases: int | None = option(None, "releases per neighbouring input of the DP check (half choose the test's "
                                           "threshold, half evaluate it once); default 200,000 for claims on Δ, "
                                           "2,000 for claims on the activations or r (thousands of values per release)")
    # Each reference costs one training of a row's size: four, with the 1,000 non-members' backbone passes, keep
    # membership to a few minutes of the default audit's 15 (see DEFAULT_VARIANTS); LiRA offline and RMIA work
    # with few references, and BENCHMARKS.md ("Attacks") shows what 16 and 64 add.
    membership_references: int = option(4, "reference side networks the membership attacks train on public data "
                                           "(each as long as one row's training; 0: no membership attacks)")
    fedavg: tuple[str, ...] = option(FEDAVG_VARIANTS, "with --devices N > 1: the federated-averaging rows "
                                                      f"(comma-separated, of {', '.join(FEDAVG_VARIANTS)}; '' for "
                                                      "none)")
    poisoning: bool = option(False, "with --devices N > 1: run pooled plain and FedAvg plain again, clean and with "
                                    "device 0 flipping every label, and report the honest devices' accuracy")
    output: str = option("runs/audit", "folder for the rows' runs and report.{json,md,html}")

    def __post_init__(self) -> None:
        unknown = [v for v in self.fedavg if v not in FEDAVG_VARIANTS]
        if unknown:
            raise UserInputError(f"unknown --fedavg row(s) {unknown}; choose from {', '.join(FEDAVG_VARIANTS)}")
        for name, least in (("dp_releases", 2), ("attack_samples", 1)):
            if getattr(self, name) is not None and getattr(self, name) < least:
                raise UserInputError(f"{name} must be at least {least}, got {getattr(self, name)}")
        if self.membership_references < 0:
            raise UserInputError(f"membership_references must be 0 or more, got {self.membership_references}")
        labels = [v.label for v in audit_variants(self)]
        if len(set(labels)) != len(labels):
            raise UserInputError(f"a variant is listed twice in {labels}")
        for variant in audit_variants(self):  # every run's settings are checked now, not after hours
            variant_finetune_config(self, variant)


def _run_fields(run_class: type) -> list[tuple[str, Any, Any]]:
    """make_dataclass entries of every `run_class` field the audit shares (type, default, help)."""
    hints = typing.get_type_hints(run_class)
    entries = []
    for item in fields(run_class):
        if item.name in PER_ROW_FIELDS:
            continue
        default = DEFAULT_EPSILON if item.name == "epsilon" else item.default
        metadata = dict(item.metadata)
        if item.name == "epsilon":
            metadata["help"] = "ε of the DP variants that do not name their own (NAME@ε)"
        entries.append((item.name, hints[item.name], field(default=default, metadata=metadata)))
    return entries


def audit_config_class(run_class: type, name: str = "AuditConfig") -> type:
    """`AuditSettings` plus every field of the fine-tuning configuration class `run_class`
    except the per-row ones; each row's run is a `run_class`."""
    return make_dataclass(
        name, _run_fields(run_class), bases=(AuditSettings,), frozen=True,
        namespace={"__doc__": f"`AuditSettings` plus every `{run_class.__name__}` field except the per-row ones "
                              "(generated: the same names, types, defaults and help as `finetune`).",
                   "__module__": __name__, "RUN_CLASS": run_class})


AuditConfig = audit_config_class(FinetuneConfig)


def audit_variants(config: AuditSettings) -> list[Variant]:
    """The configured variants, parsed."""
    noise_given = getattr(config, "noise_multiplier", None) is not None
    default = None if noise_given else getattr(config, "epsilon", DEFAULT_EPSILON)
    generation = getattr(config, "task", None) == GENERATION_TASK
    many = getattr(config, "devices", 1) > 1
    texts = config.variants or (GENERATION_DEFAULT_VARIANTS if generation
                                else DEVICES_DEFAULT_VARIANTS if many else DEFAULT_VARIANTS)
    return [parse_variant(text, default) for text in texts]


def fingerprint(config: AuditConfig) -> str:
    """sha256 of the config's canonical JSON (the output folder excluded, and what `result_values` leaves out:
    they do not change results)."""
    values = {k: v for k, v in result_values(asdict(config)).items() if k != "output"}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def row_finetune_config(config: AuditSettings, name: str, mechanism: str, epsilon: float | None,
                        mode: str | None = None) -> FinetuneConfig:
    """The `secure-assist finetune` configuration of one row: the audit's own run settings
    (same data, seed and training for every row) with the row's mechanism and mode. Boosting
    rounds are PAE's: a row of another mode (the device_local reference) trains once."""
    run_class = getattr(config, "RUN_CLASS", FinetuneConfig)
    shared = {item.name: getattr(config, item.name) for item in fields(run_class)
              if item.name not in PER_ROW_FIELDS and item.name != "epsilon"}
    if mode is not None and "rounds" in shared:
        shared["rounds"] = 1
    return run_class(**shared, mechanism=tuple(mechanism.split("+")), epsilon=epsilon, mode=mode,
                          workdir=str(Path(config.output).resolve() / "rows" / name), mechanism_seed=config.seed,
                          # Every row runs over the same data: one backbone pass (generation runs recompute theirs).
                          reuse_forwards=config.task != GENERATION_TASK)


def variant_finetune_config(config: AuditSettings, variant: Variant) -> FinetuneConfig:
    """The fine-tuning configuration of one variant."""
    return row_finetune_config(config, variant.label, variant.mechanism, variant.epsilon)


def device_local_config(config: AuditSettings) -> FinetuneConfig:
    """The `device_local` reference row: the side network trained on the device, nothing uploaded
    (the task kind's mode that uploads nothing: `device_local`, or `generation_local`)."""
    return row_finetune_config(config, DEVICE_LOCAL, "none", None,
                               mode=GENERATION_LOCAL if config.task == GENERATION_TASK else DEVICE_LOCAL)
