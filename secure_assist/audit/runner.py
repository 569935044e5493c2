"""Run the audit: each variant is a real `run_finetune`, each attack a real `run_attack`."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from attacks.base import LABELS, NotApplicable, all_attacks
from protocol.backbone import load_backbone
from protocol.device import DeviceRole
from protocol.errors import UserInputError
from secure_assist.audit.config import AuditConfig, fingerprint, variant_finetune_config
from secure_assist.audit.dp_check import empirical_epsilon
from secure_assist.audit.verdict import headline, verdict
from secure_assist.audit.attack_runs import attack_reports
from secure_assist.auditor import default_public_knowledge, load_ground_truth
from secure_assist.data import resolve_data
from secure_assist.executors import Executor
from secure_assist.executors.local import LocalExecutor
from secure_assist.finetune import run_finetune
from secure_assist.forwards import WithForwards, share_forwards
from secure_assist.mechanisms import mechanism_parameters
from secure_assist.run import build_mechanisms

SCHEMA = "secure-assist/audit-report"
SCHEMA_VERSION = 1
PACKAGES = ("secure-assist", "torch", "transformers", "peft", "opacus", "tenseal", "scikit-learn", "numpy",
            "matplotlib")
UTILITY_KEYS = ("n_train", "n_eval", "zero_shot_accuracy", "accuracy", "epochs", "safeguard", "mechanisms")
COST_KEYS = ("bytes_up", "bytes_down", "upload_bytes_per_sample", "device_seconds", "server_seconds",
             "server_seconds_per_cached_epoch", "device_forwards_after_epoch1", "device_peak_rss_mib")
# Reported by `he_ckks` runs only.
HE_COST_KEYS = ("he_device_encrypt_ms_per_sample", "he_ciphertext_bytes_per_sample", "he_public_context_bytes",
                "he_server_fit_seconds", "he_device_decrypt_seconds")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages the numbers depend on."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars and tuples converted, non-finite floats kept as floats)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def attack_names(config: AuditConfig) -> list[str]:
    """The configured attacks (default: every registered one), checked against the registry."""
    registry = all_attacks()
    names = list(config.attacks) if config.attacks is not None else sorted(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise UserInputError(f"unknown attack(s) {unknown}; known: {', '.join(sorted(registry))}")
    return names


def audit_variant(config: AuditConfig, variant: str, progress: bool) -> dict[str, Any]:
    """Fine-tune one variant, attack its server view, and check its DP claim."""
    finetune_config = variant_finetune_config(config, variant)
    try:
        build_mechanisms(finetune_config)
    except UserInputError as exc:
        return {"variant": variant, "status": "skipped", "reason": str(exc)}
    start = time.perf_counter()
    summary = run_finetune(finetune_config, progress=progress, overwrite=True)
    workdir = Path(finetune_config.workdir)
    truth = load_ground_truth(workdir)
    task, _, evaluate = resolve_data(finetune_config)
    public = default_public_knowledge(config.model, task, truth, config.seed, progress, finetune_config.mechanism)
    rows = []
    for name, report, seconds in tqdm(attack_reports(attack_names(config), workdir, public, config.seed, progress,
                                                     evaluate),
                                      desc=f"attacks on {variant}", unit="attack", disable=not progress, leave=False):
        if isinstance(report, NotApplicable):
            rows.append({"attack": name, "status": "not_applicable", "reason": str(report)})
            continue
        rows.append({**jsonable(report), "status": "ok", **headline(report), "seconds": seconds})
    label_rows = [r for r in rows if r["status"] == "ok" and r["kind"] == LABELS and r["activations_only"]]
    baseline = max(label_rows, key=lambda r: r["accuracy"]) if label_rows else None
    result: dict[str, Any] = {
        "variant": variant, "status": "ok", "workdir": str(workdir),
        "utility": {**{k: jsonable(summary[k]) for k in UTILITY_KEYS},
                    "delta_vs_zero_shot": summary["accuracy"] - summary["zero_shot_accuracy"]},
        "cost": {k: summary[k] for k in COST_KEYS + HE_COST_KEYS if k in summary},
        "attacks": rows,
        "activations_only_baseline": None if baseline is None else {
            "attack": baseline["attack"], "accuracy": baseline["accuracy"], "ci95": baseline["ci95"]},
        "dp_check": None,
        "seconds": 0.0,
    }
    claiming = [m for m in build_mechanisms(finetune_config).mechanisms if m.dp_target is not None]
    if claiming:
        # One DP check per variant: a composition ('a+b') with two claims has its first one checked.
        mechanism = type(claiming[0])
        device = DeviceRole(load_backbone(config.model), task, layers=finetune_config.layers, progress=False)
        first, second = list(truth.values())[:2]
        result["dp_check"] = jsonable(empirical_epsilon(
            mechanism, mechanism_parameters(mechanism, asdict(finetune_config)), device, (first.text, second.text),
            config.dp_releases, config.seed))
    result["verdict"] = verdict(result)
    result["seconds"] = time.perf_counter() - start
    return result


def run_audit(config: AuditConfig, progress: bool = True, executor: Executor | None = None) -> dict[str, Any]:
    """Every variant of the config, audited by `executor` (default: in this process) over device
    forwards computed once; the JSON report as a dict. A variant that fails twice is reported failed."""
    start = time.perf_counter()
    attack_names(config)  # fail on an unknown attack before any fine-tuning
    executor = executor or LocalExecutor()
    tables = share_forwards([variant_finetune_config(config, v) for v in config.variants], progress)
    outcomes = executor.map(WithForwards(audit_variant), [(config, v, progress and executor.IN_PROCESS)
                                                          for v in config.variants], tables, "audit variants", progress)
    variants = [o.value if o.ok else {"variant": v, "status": "failed", "reason": o.error}
                for v, o in zip(config.variants, outcomes)]
    audited = [v for v in variants if v["status"] == "ok"]
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": jsonable(asdict(config)), "config_fingerprint": fingerprint(config), "seed": config.seed,
        "package_versions": package_versions(),
        "variants": variants,
        "consistent": all(v["dp_check"] is None or v["dp_check"]["consistent"] for v in audited),
        "wall_seconds": time.perf_counter() - start,
    }
