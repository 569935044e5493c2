"""Run the audit: each variant is a real `run_finetune`, each attack a real `run_attack`."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from attacks.base import ANSWER_TOKENS, LABELS, NotApplicable, all_attacks
from protocol.errors import UserInputError
from secure_assist.answer_audit import generation_public_knowledge
from secure_assist.audit.config import AuditConfig, fingerprint, variant_finetune_config
from secure_assist.audit.dp_check import empirical_epsilon, release_pair
from secure_assist.audit.verdict import headline, verdict
from secure_assist.auditor import default_public_knowledge, load_ground_truth, run_attack
from secure_assist.finetune import run_finetune
from secure_assist.kinds import task_kind
from secure_assist.mechanisms import mechanism_parameters
from secure_assist.run import build_mechanisms

SCHEMA = "secure-assist/audit-report"
SCHEMA_VERSION = 1
PACKAGES = ("secure-assist", "torch", "transformers", "peft", "opacus", "tenseal", "scikit-learn", "numpy",
            "matplotlib")
UTILITY_KEYS = ("n_train", "n_eval", "zero_shot_accuracy", "accuracy", "epochs", "safeguard", "mechanisms")
GENERATION_UTILITY_KEYS = ("n_train", "n_eval", "zero_shot_answer_nll", "eval_answer_nll", "answer_nll_reduction",
                           "answer_nll_reduction_ci95", "zero_shot_token_accuracy", "eval_token_accuracy",
                           "zero_shot_rouge_l", "rouge_l", "epochs", "safeguard", "mechanisms")
# The kind of attack row whose activations-only best is the baseline: labels, or answer tokens (generation).
BASELINE_KINDS = {LABELS: "accuracy", ANSWER_TOKENS: "token_accuracy"}
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
    kind = task_kind(finetune_config)
    task, train, evaluate = kind.data(finetune_config)
    generation = kind.name == "generation"
    public = (generation_public_knowledge(config.model, task, {t.text for t in truth.values()}, config.train_file,
                                          config.seed)
              if generation else default_public_knowledge(config.model, task, truth, config.seed, progress))
    rows = []
    for name in tqdm(attack_names(config), desc=f"attacks on {variant}", unit="attack", disable=not progress,
                     leave=False):
        attack_start = time.perf_counter()
        try:
            report = run_attack(name, workdir, public=public, seed=config.seed, progress=progress,
                                held_out=evaluate)
        except NotApplicable as exc:
            rows.append({"attack": name, "status": "not_applicable", "reason": str(exc)})
            continue
        rows.append({**jsonable(report), "status": "ok", **headline(report),
                     "seconds": time.perf_counter() - attack_start})
    baseline_kind = ANSWER_TOKENS if generation else LABELS
    metric = BASELINE_KINDS[baseline_kind]
    only = [r for r in rows if r["status"] == "ok" and r["kind"] == baseline_kind and r["activations_only"]]
    baseline = max(only, key=lambda r: r[metric]) if only else None
    result: dict[str, Any] = {
        "variant": variant, "status": "ok", "workdir": str(workdir),
        "utility": utility(summary, generation),
        "cost": {k: summary[k] for k in COST_KEYS + HE_COST_KEYS if k in summary},
        "attacks": rows,
        "activations_only_baseline": None if baseline is None else {
            "attack": baseline["attack"], "kind": baseline_kind, "metric": metric, metric: baseline[metric],
            "ci95": baseline["value_ci95"]},
        "dp_check": None,
        "seconds": 0.0,
    }
    claiming = [m for m in build_mechanisms(finetune_config).mechanisms if m.dp_target is not None]
    if claiming:
        # Audit variants are single mechanisms: at most one claim to check.
        mechanism = type(claiming[0])
        device = kind.make_device(replace(finetune_config, reuse_forwards=False), task, None, progress=False)
        uploaded = [e for e in train if e.record()["text"] in {t.text for t in truth.values()}]
        pair = release_pair(device, mechanism.dp_target, uploaded, config.dp_releases)
        result["dp_check"] = jsonable(empirical_epsilon(
            mechanism, mechanism_parameters(mechanism, asdict(finetune_config)), pair, config.seed))
    result["verdict"] = verdict(result)
    result["seconds"] = time.perf_counter() - start
    return result


def utility(summary: dict[str, Any], generation: bool) -> dict[str, Any]:
    """A variant's utility numbers plus one headline (`metric`, `value`, `zero_shot`,
    `delta_vs_zero_shot`) that reports and plots read whatever the task: accuracy, or the
    answer NLL per token for generation (lower is better)."""
    keys = GENERATION_UTILITY_KEYS if generation else UTILITY_KEYS
    metric, zero_shot = (("eval_answer_nll", "zero_shot_answer_nll") if generation
                         else ("accuracy", "zero_shot_accuracy"))
    return {**{k: jsonable(summary[k]) for k in keys}, "metric": metric, "value": summary[metric],
            "zero_shot": summary[zero_shot], "delta_vs_zero_shot": summary[metric] - summary[zero_shot]}


def run_audit(config: AuditConfig, progress: bool = True) -> dict[str, Any]:
    """Every variant of the config, audited; the JSON report as a dict."""
    start = time.perf_counter()
    attack_names(config)  # fail on an unknown attack before any fine-tuning
    variants = [audit_variant(config, v, progress)
                for v in tqdm(config.variants, desc="audit variants", unit="variant", disable=not progress)]
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
