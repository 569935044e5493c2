"""Run the audit: each variant is one point (`secure_assist.audit.point`: a real run and real
attacks on its server view), each reference row a real run or reference trained on the device.

One pass of the backbone serves everything: the device forwards of the audit's training
and evaluation sets are computed once, before any row runs (`secure_assist.training.forwards`), and
every row and the attacker's public-backbone passes over those texts read them, whichever
executor runs the variants; so the cost of an audit is one forward pass per sample plus the
public texts, then training and attacks. A generation audit (`--task generation`) has the
same rows, scored by the answer NLL per token; its runs recompute their forward passes
(`reuse_forwards` keeps classification passes only), and its leak is the answer tokens.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from attacks.registry import all_attacks
from protocol.device.shared_forwards import serving
from protocol.errors import UserInputError
from secure_assist.audit.auditor import load_ground_truth
from secure_assist.audit.config import (
    AuditConfig, Variant, audit_variants, device_local_config, fingerprint, variant_finetune_config,
)
from secure_assist.audit.dp_check import empirical_epsilon, release_pair, releases_for
from secure_assist.audit.membership import membership_attacks, membership_reports
from secure_assist.audit.point import PointData, run_cost, run_point
from secure_assist.audit.public_knowledge import PublicData, public_data
from secure_assist.audit.rows import (
    ACCURACY, DEVICE_LOCAL, ZERO_SHOT, EvalData, comparison, local_lora_row, reference_row, summary_utility, utility,
)
from secure_assist.audit.schema import (
    FORWARD_KEYS, LEAK_KEYS, SCHEMA, SCHEMA_VERSION, jsonable, package_versions,
)
from secure_assist.audit.summary import conclusions
from secure_assist.audit.verdict import HEADLINES, LEAK_FIELDS, verdict
from secure_assist.canaries import model_exposures
from secure_assist.data import data_provenance, file_provenance
from secure_assist.executors import Executor
from secure_assist.executors.local import LocalExecutor
from secure_assist.mechanisms import mechanism_parameters
from secure_assist.task_kinds import task_kind
from secure_assist.training.forwards import WithForwards, forwards_summary, share_forwards
from secure_assist.training.run import build_mechanisms, run_training
from secure_assist.training.summary import RunSummary


def attack_names(config: AuditConfig) -> list[str]:
    """The configured attacks (default: every registered one), checked against the registry."""
    registry = all_attacks()
    names = list(config.attacks) if config.attacks is not None else sorted(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise UserInputError(f"unknown attack(s) {unknown}; known: {', '.join(sorted(registry))}")
    return names


def _leak_summary(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"attack": row["attack"], "kind": row["kind"], **{k: row[k] for k in LEAK_KEYS[row["kind"]] if k in row}}


def canary_entry(summary: RunSummary, model: str) -> dict[str, Any]:
    """{"canaries": exposures under the run's `model` ('deployed' or 'backbone')}, or nothing without canaries."""
    exposures = summary.metrics.get("canaries")
    if exposures is None:
        return {}
    return {"canaries": model_exposures(exposures, model)}


def dp_check(config: AuditConfig, variant: Variant, workdir: Path, data: EvalData) -> dict[str, Any] | None:
    """The empirical ε lower bound of the variant's DP claim (None without one), released from
    the first uploads (generation: the first two whose answers have the same length)."""
    finetune_config = variant_finetune_config(config, variant)
    claiming = [m for m in build_mechanisms(finetune_config).mechanisms if m.dp_target is not None]
    if not claiming:
        return None
    # One DP check per variant: a composition ('a+b') with two claims has its first one checked.
    mechanism = type(claiming[0])
    device = task_kind(finetune_config).make_device(replace(finetune_config, reuse_forwards=False), data.task, None,
                                                    progress=False)
    by_text = {e.text: e for e in data.train}
    uploaded = [by_text[t.text] for t in load_ground_truth(workdir).values() if t.text in by_text]
    releases = releases_for(mechanism, config.dp_releases)
    pair = release_pair(device, mechanism, uploaded, releases)
    return jsonable(empirical_epsilon(mechanism, mechanism_parameters(mechanism, asdict(finetune_config)), pair,
                                      releases, config.seed))


def audit_variant(config: AuditConfig, variant: Variant, data: EvalData, public: PublicData,
                  references: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Fine-tune one variant, score it against the reference rows, attack its view, check its DP claim."""
    finetune_config = variant_finetune_config(config, variant)
    base = {"variant": variant.label, "mechanism": variant.mechanism, "epsilon": variant.epsilon}
    try:
        build_mechanisms(finetune_config)
    except UserInputError as exc:
        return {**base, "status": "skipped", "reason": str(exc)}
    start = time.perf_counter()
    point = run_point(finetune_config, attack_names(config), PointData(data.task, data.train, data.evaluate, public),
                      progress, config.attack_samples, held_out=data.evaluate)
    summary = point.summary
    metric = data.metric
    scores = data.scores(summary)[1]
    local = references[DEVICE_LOCAL]
    cost = run_cost(summary)
    cost["device_seconds_saved"] = local["row"]["cost"]["device_seconds"] - cost["device_seconds"]
    rows = point.attacks
    leaks = [r for r in rows if r["status"] == "ok" and r["kind"] == metric.leak_kind]
    activations_only = [r for r in leaks if r["activations_only"]]
    leak_metric = HEADLINES[metric.leak_kind][0]
    result: dict[str, Any] = {
        **base, "status": "ok", "reference": False, "workdir": str(point.workdir),
        "utility": {**jsonable(summary_utility(summary, metric)), **utility(scores, metric, config.seed),
                    "delta_vs_zero_shot": summary.metrics[metric.key] - summary.metrics[metric.zero_shot_key],
                    "vs_zero_shot": comparison(scores, references[ZERO_SHOT]["scores"], config.seed),
                    "vs_device_local": comparison(scores, local["scores"], config.seed)},
        "cost": cost, "attacks": rows,
        "activations_only_baseline": _leak_summary(max(activations_only, key=lambda r: r[leak_metric], default=None)),
        LEAK_FIELDS[metric.leak_kind]: _leak_summary(max(leaks, key=lambda r: r[leak_metric], default=None)),
        "dp_check": dp_check(config, variant, point.workdir, data),
        **canary_entry(summary, "deployed"),
    }
    result["verdict"] = verdict(result)
    result["seconds"] = time.perf_counter() - start
    return result


def reference_rows(config: AuditConfig, data: EvalData, progress: bool) -> dict[str, dict[str, Any]]:
    """zero_shot, device_local and (with --with-lora) local_lora: name -> {"row", "scores"}."""
    start = time.perf_counter()
    local_config = device_local_config(config)
    summary = run_training(local_config, progress=progress, overwrite=True)
    zero, local = data.scores(summary)
    metric = data.metric
    references = {
        ZERO_SHOT: {"row": reference_row(ZERO_SHOT, zero, metric, {"device_seconds": 0.0, "device_peak_rss_mib": None},
                                         config.seed, **canary_entry(summary, "backbone")), "scores": zero},
        DEVICE_LOCAL: {"row": reference_row(
            DEVICE_LOCAL, local, metric, {k: getattr(summary, k) for k in ("device_seconds", "device_train_seconds",
                                                                           "device_peak_rss_mib") + FORWARD_KEYS},
            config.seed, workdir=local_config.workdir, seconds=time.perf_counter() - start,
            safeguard=summary.safeguard, **canary_entry(summary, "deployed")), "scores": local},
    }
    if config.with_lora:
        row, scores = local_lora_row(data, config.seed, progress)
        references["local_lora"] = {"row": row, "scores": scores}
    for name, entry in references.items():
        entry["row"]["utility"]["vs_zero_shot"] = comparison(entry["scores"], zero, config.seed)
        entry["row"]["utility"]["vs_device_local"] = comparison(entry["scores"], local, config.seed)
    return references


def attach_membership(config: AuditConfig, data: EvalData, public: PublicData, references: dict[str, Any],
                      audited: list[dict[str, Any]], progress: bool) -> None:
    """Each classification row's deployed model under the configured membership attacks, as the
    row's `membership` (reference side networks trained once for all rows); nothing for a
    generation audit, a config without membership attacks or `membership_references` 0."""
    names = membership_attacks(attack_names(config))
    if not names or not config.membership_references or data.metric is not ACCURACY:
        return
    local = references[DEVICE_LOCAL]["row"]
    rows = {ZERO_SHOT: (references[ZERO_SHOT]["row"], None), DEVICE_LOCAL: (local, local["workdir"]),
            **{v["variant"]: (v, v["workdir"]) for v in audited if v["status"] == "ok"}}
    reports = membership_reports(data.config, data.task, data.train, public,
                                 [(name, workdir) for name, (_, workdir) in rows.items()], local["workdir"],
                                 config.membership_references, names, progress)
    for name, (row, _) in rows.items():
        row["membership"] = jsonable(reports[name])


def audit_inputs(config: AuditConfig) -> tuple[EvalData, PublicData, dict[str, Any]]:
    """What every row of an audit shares: the evaluation data (with the reference run's config),
    the attacker's public data, and where both came from."""
    # The whole training set (with --devices N every device's share of it): one device's share is its row's business.
    run_config = replace(device_local_config(config), devices=1)
    task, train, evaluate = task_kind(run_config).data(run_config)
    public = public_data(task, config.public_file, config.train_file, train + evaluate, config.seed,
                         skip_invalid=config.skip_invalid_rows)
    provenance = data_provenance(run_config, task, train, evaluate)
    provenance["public"] = {"source": public.source, "rows": len(public.examples),
                            **({"sha256": file_provenance(public.file, task, "train")["sha256"]} if public.file
                               else {})}
    return EvalData(run_config, task, train, evaluate), public, provenance


def run_audit(config: AuditConfig, progress: bool = True, executor: Executor | None = None) -> dict[str, Any]:
    """Every reference row and variant of the config, audited; the JSON report as a dict.

    The reference rows run in this process; the variants run on `executor` (default: in this
    process, one after another), all over device forwards computed once. A variant that
    fails twice is reported failed with its error. With `devices` > 1 this is the many-device
    audit (`secure_assist.audit.many_devices`, in this process), whose report has its own schema."""
    start = time.perf_counter()
    names = attack_names(config)  # fail on an unknown attack before any fine-tuning
    if config.devices != 1:
        from secure_assist.audit.many_devices import check_devices, run_device_audit

        check_devices(config)
        return run_device_audit(config, audit_inputs(config), names, progress)
    variants = audit_variants(config)
    data, public, provenance = audit_inputs(config)
    executor = executor or LocalExecutor()
    tables = share_forwards([data.config] + [variant_finetune_config(config, v) for v in variants], progress)
    with serving(tables):
        references = reference_rows(config, data, progress)
    outcomes = executor.map(WithForwards(audit_variant),
                            [(config, v, data, public, references, progress and executor.IN_PROCESS)
                             for v in variants], tables, "audit variants", progress)
    audited = [o.value if o.ok else {"variant": v.label, "mechanism": v.mechanism, "epsilon": v.epsilon,
                                     "status": "failed", "reason": o.error}
               for v, o in zip(variants, outcomes)]
    membership_start = time.perf_counter()
    with serving(tables):
        attach_membership(config, data, public, references, audited, progress)
    membership_seconds = time.perf_counter() - membership_start
    report = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # The variants as run (the defaults of the task kind when none were given), with their ε.
        "config": jsonable({**asdict(config), "variants": [v.label for v in variants]}),
        "config_fingerprint": fingerprint(config), "seed": config.seed,
        "package_versions": package_versions(), "data": jsonable(provenance),
        "references": [entry["row"] for entry in references.values()],
        "variants": audited,
        "consistent": all(v.get("dp_check") is None or v["dp_check"]["consistent"] for v in audited),
        "executor": executor.NAME, "shared_forwards": forwards_summary(tables),
        "membership_seconds": membership_seconds,
    }
    report["conclusions"] = conclusions(report)
    report["wall_seconds"] = time.perf_counter() - start
    return report
