"""The sweep grid of `secure-assist compare`: axes, their validation, the points they expand
to (one `FinetuneConfig` each) and each point's fingerprint."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from attacks.base import ALIGNMENT, LABELS
from protocol.errors import UserInputError
from protocol.data.instructions import GENERATION_TASK
from secure_assist.config import FinetuneConfig, result_values
from secure_assist.mechanism_parameters import MECHANISM_PARAMETERS
from secure_assist.mechanism_parameters import uses_epsilon as mechanism_uses_epsilon

# Bump when what a point file holds changes: older point files are then recomputed.
POINT_SCHEMA_VERSION = 2  # 2: label leakage read by balanced accuracy
ACTIVATION_NOISE = "activation_noise"
# Label attacks run on every point: Δ read directly, the activations-only zero-shot
# baseline, and model completion from 32 public labeled examples (activations only); and the
# alignment attacks, which apply only where the device rotates its states: the activations-only
# attacks then run again on the states each one realigned.
DEFAULT_ATTACKS = ("delta_argmax", "public_head_zero_shot", "model_completion_k32", "distribution_alignment",
                   "known_pairs_k1", "known_pairs_k8", "known_pairs_k64", "matching_alignment")
DEFAULT_MECHANISMS = ("none", "gaussian", "label_rr")
DEFAULT_EPSILONS = (1.0,)
# FinetuneConfig fields that are sweep axes (set by the axis flags, not by the base config).
AXIS_FIELDS = ("mechanism", "epsilon", "layers", "activation_noise_multiplier", "train_samples")


@dataclass(frozen=True)
class SweepAxes:
    """The values swept; the grid is their cartesian product.

    `mechanisms` entries are mechanism names, or several joined by '+' (a composition).
    `layer_subsets` entries are layer tuples, None for all layers. An activation noise
    multiplier of 0 means no activation noise; a positive one adds `activation_noise`.
    """

    mechanisms: tuple[str, ...] = DEFAULT_MECHANISMS
    epsilons: tuple[float, ...] = DEFAULT_EPSILONS
    layer_subsets: tuple[tuple[int, ...] | None, ...] = (None,)
    activation_noise_multipliers: tuple[float, ...] = (0.0,)
    train_samples: tuple[int | None, ...] = (FinetuneConfig.train_samples,)
    attacks: tuple[str, ...] = DEFAULT_ATTACKS

    def __post_init__(self) -> None:
        for name in ("mechanisms", "epsilons", "layer_subsets", "activation_noise_multipliers", "train_samples",
                     "attacks"):
            if not getattr(self, name):
                raise UserInputError(f"compare axis {name} is empty; give at least one value")
        for entry in self.mechanisms:
            unknown = [n for n in entry.split("+") if n not in MECHANISM_PARAMETERS]
            if unknown:
                raise UserInputError(f"unknown mechanism(s) {unknown} in {entry!r}; "
                                     f"choose from {sorted(MECHANISM_PARAMETERS)}")
        for value in self.epsilons:
            if not (math.isfinite(value) and value > 0):
                raise UserInputError(f"epsilon must be a positive finite number, got {value}")
        for value in self.activation_noise_multipliers:
            if not (math.isfinite(value) and value >= 0):
                raise UserInputError(f"activation noise multiplier must be >= 0 (0: none), got {value}")
        for subset in self.layer_subsets:
            if subset is not None and (not subset or min(subset) < 1):
                raise UserInputError(f"layer subset {subset} must list layers numbered from 1")
        for value in self.train_samples:
            if value is not None and value < 1:
                raise UserInputError(f"train sample count must be at least 1, got {value}")
        # The registry imports every attack module (torch): here, when axes are checked, not when
        # the CLI's parser is built from this module's defaults.
        from attacks.registry import get_attack

        for name in self.attacks:
            if get_attack(name).KIND not in (LABELS, ALIGNMENT):  # get_attack rejects unknown names
                raise UserInputError(f"compare runs label and alignment attacks; {name!r} is a "
                                     f"{get_attack(name).KIND} attack")


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: its axis values, its fine-tuning config and its fingerprint."""

    axes: dict[str, Any]
    label: str
    series: str  # the label without ε
    config: FinetuneConfig
    attacks: tuple[str, ...]
    fingerprint: str
    reference: str | None = None  # a registered reference (secure_assist.references) run instead of `config`


def point_identity(config: FinetuneConfig, attacks: tuple[str, ...], reference: str | None = None) -> dict[str, Any]:
    """What a point's results depend on: its config (the workdir and what `result_values` leaves out excluded),
    its attacks and, for a reference row, the reference's name."""
    values = {k: v for k, v in result_values(asdict(config)).items() if k != "workdir"}
    identity = {"schema_version": POINT_SCHEMA_VERSION, "finetune": values, "attacks": list(attacks)}
    return identity if reference is None else {**identity, "reference": reference}


def fingerprint(identity: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a point's identity."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def uses_epsilon(chain: tuple[str, ...]) -> bool:
    """Whether any mechanism of the chain reads ε."""
    return any(mechanism_uses_epsilon(name) for name in chain)


def _chain(entry: str, activation_noise: float) -> tuple[str, ...]:
    names = tuple(entry.split("+"))
    if activation_noise > 0 and ACTIVATION_NOISE not in names:
        # 'none' means no protection of Δ; with activation noise the chain is that alone.
        names = tuple(n for n in names if n != "none") + (ACTIVATION_NOISE,)
    return names


def _series(entry: str, layers: tuple[int, ...] | None, noise: float, samples: int | None,
            varying: set[str]) -> str:
    """The point's name without ε: the line it belongs to in the trade-off plots."""
    parts = [entry]
    if "layer_subsets" in varying:
        parts.append("layers=" + ("all" if layers is None else ",".join(map(str, layers))))
    if "activation_noise_multipliers" in varying:
        parts.append(f"σa={noise:g}")
    if "train_samples" in varying:
        parts.append(f"n={samples if samples is not None else 'all'}")
    return " ".join(parts)


def _label(series: str, epsilon: float | None) -> str:
    return series if epsilon is None else f"{series} ε={epsilon:g}"


def check_base(base: FinetuneConfig) -> None:
    """Refuse base settings that the sweep axes replace or contradict."""
    defaults = FinetuneConfig()
    overridden = [f for f in AXIS_FIELDS if getattr(base, f) != getattr(defaults, f)]
    if overridden:
        raise UserInputError(f"compare sweeps {overridden} with its axis flags (--mechanisms, --epsilons, "
                             f"--layer-subsets, --activation-noise-multipliers, --train-samples); "
                             f"remove them from --config")
    if base.noise_multiplier is not None:
        raise UserInputError("compare sweeps ε; --noise-multiplier would contradict --epsilons")
    if base.task == GENERATION_TASK:
        raise UserInputError("compare sweeps classification runs and label attacks; for a generation task use "
                             "`secure-assist audit --task generation` (or benchmarks/generation_leakage.py)")


DEVICE_LOCAL = "device_local"


def check_references(names: tuple[str, ...]) -> None:
    """Refuse names that are neither `device_local` nor a reference scored on an evaluation split."""
    if not names:
        return
    from secure_assist.references.registry import get_reference  # torch: only when references are asked for

    for name in names:
        if name != DEVICE_LOCAL:
            get_reference(name).scored_run()


def reference_points(base: FinetuneConfig, axes: SweepAxes, output: Path | str,
                     names: tuple[str, ...] = (DEVICE_LOCAL,)) -> list[SweepPoint]:
    """The reference rows at each training sample count of the sweep: `device_local` (the side
    network trained on the device, nothing uploaded: what every point's server help is judged
    against) and registered references (`secure_assist.references`, e.g. local LoRA, MobiLLM)."""
    check_references(names)
    points = []
    for name, samples in itertools.product(dict.fromkeys(names), dict.fromkeys(axes.train_samples)):
        reference = None if name == DEVICE_LOCAL else name
        config = replace(base, mechanism=("none",), mode=DEVICE_LOCAL if reference is None else base.mode,
                         epsilon=None, train_samples=samples,
                         mechanism_seed=base.seed if base.mechanism_seed is None else base.mechanism_seed,
                         reuse_forwards=True, workdir="")
        key = fingerprint(point_identity(config, (), reference))
        series = name + (f" n={samples if samples is not None else 'all'}" if len(axes.train_samples) > 1 else "")
        points.append(SweepPoint(axes={"mechanism": name, "epsilon": None, "layers": None,
                                       "activation_noise_multiplier": 0.0, "train_samples": samples},
                                 label=series, series=series,
                                 config=replace(config, workdir=str(Path(output) / "runs" / key[:16])),
                                 attacks=(), fingerprint=key, reference=reference))
    return points


def expand(base: FinetuneConfig, axes: SweepAxes, output: Path | str,
           references: tuple[str, ...] = ()) -> list[SweepPoint]:
    """The grid's distinct points in sweep order; an axis a point ignores (ε for a mechanism
    that reads none) does not multiply it. `references`: their rows first (see `reference_points`)."""
    check_base(base)
    varying = {name for name in ("layer_subsets", "activation_noise_multipliers", "train_samples")
               if len(set(getattr(axes, name))) > 1}
    points: dict[str, SweepPoint] = {}
    for entry, epsilon, layers, noise, samples in itertools.product(
            axes.mechanisms, axes.epsilons, axes.layer_subsets, axes.activation_noise_multipliers,
            axes.train_samples):
        chain = _chain(entry, noise)
        epsilon = epsilon if uses_epsilon(chain) else None
        config = replace(base, mechanism=chain, epsilon=epsilon, layers=layers,
                         activation_noise_multiplier=noise or None, train_samples=samples,
                         mechanism_seed=base.seed if base.mechanism_seed is None else base.mechanism_seed,
                         reuse_forwards=True, workdir="")
        key = fingerprint(point_identity(config, axes.attacks))
        if key in points:
            continue
        config = replace(config, workdir=str(Path(output) / "runs" / key[:16]))
        axis_values = {"mechanism": entry, "epsilon": epsilon, "layers": layers, "activation_noise_multiplier": noise,
                       "train_samples": samples}
        series = _series(entry, layers, noise, samples, varying)
        points[key] = SweepPoint(axes=axis_values, label=_label(series, epsilon), series=series, config=config,
                                 attacks=axes.attacks, fingerprint=key)
    return (reference_points(base, axes, output, references) if references else []) + list(points.values())
