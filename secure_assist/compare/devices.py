"""`compare --devices N --partition P` (N > 1): the many-device audit's rows beside the sweep's points.

The rows are produced by the audit's own row producers (`secure_assist.audit.many_devices.device_section`):
zero_shot, device_local, one pooled row per swept mechanism and ε, and the FedAvg rows, each scored per
device; they are kept under `<output>/devices` and read back by a rerun like the points.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from secure_assist.audit.config import AuditConfig
from secure_assist.audit.many_devices import check_devices, device_section
from secure_assist.audit.runner import audit_inputs
from secure_assist.compare.grid import SweepAxes, uses_epsilon
from secure_assist.config import FinetuneConfig

DEVICES_DIR = "devices"


def swept_variants(axes: SweepAxes) -> tuple[str, ...]:
    """The pooled rows' variants: each swept mechanism at each swept ε (once for a mechanism without ε)."""
    variants = [entry if not uses_epsilon(tuple(entry.split("+"))) else f"{entry}@{epsilon:g}"
                for entry in axes.mechanisms for epsilon in axes.epsilons]
    return tuple(dict.fromkeys(variants))


def device_audit_config(base: FinetuneConfig, axes: SweepAxes, fedavg: tuple[str, ...], output: Path) -> AuditConfig:
    """The many-device audit settings of a sweep: its run settings, its mechanisms and ε as the pooled
    variants (each names its ε), its label attacks, its first training sample count, the `fedavg` rows."""
    shared = {item.name: getattr(base, item.name) for item in fields(AuditConfig)
              if hasattr(base, item.name) and item.name != "epsilon"}
    shared["train_samples"] = axes.train_samples[0]
    return AuditConfig(**{**shared, "variants": swept_variants(axes), "attacks": axes.attacks, "fedavg": fedavg,
                          "output": str(output / DEVICES_DIR)})


def device_rows_beside(base: FinetuneConfig, axes: SweepAxes, fedavg: tuple[str, ...], output: Path,
                       progress: bool) -> dict[str, Any]:
    """The many-device rows of the sweep's settings (see `device_audit_config`)."""
    config = device_audit_config(base, axes, fedavg, output)
    check_devices(config)
    return device_section(config, audit_inputs(config), list(axes.attacks), progress)
