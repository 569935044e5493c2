"""The headline number of each attack row and the one-line verdict of each variant."""

from __future__ import annotations

from typing import Any

from attacks.base import ANSWER_TOKENS, EXTRACTION, LABELS, RECONSTRUCTION, SCORES

# kind -> (metric, its 95% CI key, the baseline it is read against)
HEADLINES = {
    LABELS: ("accuracy", "ci95", "prior_baseline"),
    SCORES: ("auc", "ci95", "chance"),
    RECONSTRUCTION: ("token_f1", "token_f1_ci95", None),
    EXTRACTION: ("agreement", "agreement_ci95", "backbone_only_agreement"),
    ANSWER_TOKENS: ("token_accuracy", "token_accuracy_ci95", "frequency_baseline"),
}


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """metric name, value, CI and chance/prior baseline of one scored attack report."""
    metric, interval, baseline = HEADLINES[report["kind"]]
    return {"metric": metric, "value": report[metric], "value_ci95": list(report[interval]),
            "chance_baseline": report.get(baseline) if baseline else 0.0}


def verdict(variant: dict[str, Any]) -> str:
    """One line: do Δ-based label attacks (r-based answer-token attacks) beat the activations-only
    baseline, and is the DP claim consistent?"""
    rows = [r for r in variant["attacks"] if r["status"] == "ok"]
    baseline = variant["activations_only_baseline"]
    kind = baseline["kind"] if baseline and "kind" in baseline else LABELS
    what, signal, leak = (("ANSWER TOKENS", "r", "answer-token") if kind == ANSWER_TOKENS
                          else ("LABELS", "Δ", "label"))
    signal_rows = [r for r in rows if r["kind"] == kind and not r["activations_only"]]
    not_applicable = [r for r in variant["attacks"] if r["status"] == "not_applicable"]
    parts = []
    if signal_rows and baseline:
        best = max(signal_rows, key=lambda r: r["value"])
        low, high = best["value_ci95"]
        level = baseline[HEADLINES[kind][0]]
        text = f"{best['attack']} {best['value']:.1%} [{low:.1%}, {high:.1%}] vs activations-only {level:.1%}"
        if low > level:
            parts.append(f"{what} LEAK through {signal}: {text}")
        else:
            parts.append(f"{signal} adds no measurable {leak} leakage: {text}")
    elif baseline and not_applicable:
        # E.g. he_ckks: Δ never reaches the server in the clear, so only activations-only attacks run.
        parts.append(f"Δ adds no measurable label leakage: no Δ-based attack applies "
                     f"({len(not_applicable)} not applicable); best label attack is activations-only "
                     f"{baseline['attack']} {baseline['accuracy']:.1%}")
    extraction = [r for r in rows if r["kind"] == EXTRACTION]
    if extraction:
        best = max(extraction, key=lambda r: r["agreement"])
        parts.append(f"model: server copy agrees {best['agreement']:.1%} with the deployed model "
                     f"(backbone alone {best['backbone_only_agreement']:.1%})")
    reconstruction = [r for r in rows if r["kind"] == RECONSTRUCTION]
    if reconstruction:
        best = max(reconstruction, key=lambda r: r["token_f1"])
        parts.append(f"inputs: {best['attack']} token F1 {best['token_f1']:.2f}")
    check = variant.get("dp_check")
    if check:
        state = "consistent" if check["consistent"] else "INCONSISTENT"
        parts.append(f"DP claim {state}: empirical ε ≥ {check['empirical_epsilon_lower_bound']:.2f} "
                     f"vs claimed {check['claimed_epsilon']:.2f}")
    return "; ".join(parts) or "no applicable attack"
