"""The headline number of each attack row and the one-line verdict of each variant."""

from __future__ import annotations

from typing import Any

from attacks.base import ALIGNMENT, EXTRACTION, LABELS, RECONSTRUCTION, SCORES
from secure_assist.audit.rotation_verdict import rotation_clauses

# kind -> (metric, its 95% CI key, the baseline it is read against). Label attacks are read
# by balanced accuracy (chance 1/C whatever the class balance): on a task with a 90%
# majority class, plain accuracy gives a constant guess 90% and hides or fakes a leak.
HEADLINES = {
    LABELS: ("balanced_accuracy", "balanced_accuracy_ci95", "balanced_chance"),
    SCORES: ("auc", "ci95", "chance"),
    RECONSTRUCTION: ("token_f1", "token_f1_ci95", None),
    EXTRACTION: ("agreement", "agreement_ci95", "backbone_only_agreement"),
    ALIGNMENT: ("centred_state_cosine", "centred_state_cosine_ci95", "unaligned_centred_state_cosine"),
}


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """metric name, value, CI and chance/prior baseline of one scored attack report."""
    metric, interval, baseline = HEADLINES[report["kind"]]
    return {"metric": metric, "value": report[metric], "value_ci95": list(report[interval]),
            "chance_baseline": report.get(baseline) if baseline else 0.0}


# A label attack whose balanced accuracy CI reaches this lower bound recovers (nearly) every
# class: a full leak.
FULL_LEAK = 0.95


def leak_level(row: dict[str, Any]) -> str:
    """'no leak' (balanced accuracy not above chance at 95%), 'full leak' or 'partial leak'."""
    low = row["balanced_accuracy_ci95"][0]
    if low <= row["balanced_chance"]:
        return "no leak"
    return "full leak" if low >= FULL_LEAK else "partial leak"


def _balanced(row: dict[str, Any]) -> str:
    low, high = row["balanced_accuracy_ci95"]
    return f"{row['attack']} balanced accuracy {row['balanced_accuracy']:.1%} [{low:.1%}, {high:.1%}]"


def points(value: float) -> str:
    """An accuracy difference in percentage points."""
    return f"{100 * value:+.1f}"


def seconds_text(value: float) -> str:
    """Seconds, whole above 10."""
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"


def saved_text(saved: float, reference: float) -> str:
    """Device seconds saved against device_local (negative: the variant costs the device more)."""
    share = f" ({100 * abs(saved) / reference:.0f}% of device_local's)" if reference > 0 else ""
    if saved >= 0:
        return f"saves {seconds_text(saved)} device seconds{share}"
    return f"costs {seconds_text(-saved)} more device seconds{share}"


def difference_text(entry: dict[str, Any]) -> str:
    """'+3.1 points [+1.2, +5.0]' of a paired comparison."""
    low, high = entry["ci95"]
    return f"{points(entry['difference'])} points [{points(low)}, {points(high)}]"


def utility_text(variant: dict[str, Any]) -> str:
    """Accuracy with CI, vs zero-shot and what the server buys over device_local."""
    utility, cost = variant["utility"], variant["cost"]
    low, high = utility["accuracy_ci95"]
    zero, local = utility["vs_zero_shot"], utility["vs_device_local"]
    state = {"above": "significantly above", "below": "significantly below", "no": "not significantly different from"}
    return (f"accuracy {utility['accuracy']:.1%} [{low:.1%}, {high:.1%}], {state[zero['significant']]} zero-shot "
            f"({difference_text(zero)}); what the server buys over device_local: {difference_text(local)}, and it "
            f"{saved_text(cost['device_seconds_saved'], cost['device_seconds'] + cost['device_seconds_saved'])}")


def verdict(variant: dict[str, Any]) -> str:
    """One line: utility against the references, then what the server view leaks (`leak_clauses`)."""
    return "; ".join([utility_text(variant), *leak_clauses(variant)])


def leak_clauses(variant: dict[str, Any]) -> list[str]:
    """Whether Δ-based label attacks beat the activations-only baseline, the model and inputs,
    whether a rotation holds, and whether the DP claim is consistent (from the variant's
    `attacks`, `activations_only_baseline`, `utility.mechanisms` and `dp_check`)."""
    rows = [r for r in variant["attacks"] if r["status"] == "ok"]
    baseline = variant["activations_only_baseline"]
    delta_rows = [r for r in rows if r["kind"] == LABELS and not r["activations_only"]]
    not_applicable = [r for r in variant["attacks"] if r["status"] == "not_applicable"]
    parts: list[str] = []
    if delta_rows and baseline:
        best = max(delta_rows, key=lambda r: r["balanced_accuracy"])
        text = f"{_balanced(best)} vs activations-only {baseline['balanced_accuracy']:.1%}"
        if best["balanced_accuracy_ci95"][0] > baseline["balanced_accuracy"]:
            parts.append(f"LABELS LEAK through Δ: {text}")
        else:
            parts.append(f"Δ adds no measurable label leakage: {text}")
    elif baseline and not_applicable:
        # E.g. he_ckks: Δ never reaches the server in the clear, so only activations-only attacks run.
        parts.append(f"Δ adds no measurable label leakage: no Δ-based attack applies "
                     f"({len(not_applicable)} not applicable); best label attack is activations-only "
                     f"{_balanced(baseline)}")
    extraction = [r for r in rows if r["kind"] == EXTRACTION]
    if extraction:
        best = max(extraction, key=lambda r: r["agreement"])
        parts.append(f"model: server copy agrees {best['agreement']:.1%} with the deployed model "
                     f"(backbone alone {best['backbone_only_agreement']:.1%})")
    reconstruction = [r for r in rows if r["kind"] == RECONSTRUCTION]
    if reconstruction:
        best = max(reconstruction, key=lambda r: r["token_f1"])
        parts.append(f"inputs: {best['attack']} token F1 {best['token_f1']:.2f}")
    parts += rotation_clauses(variant)
    check = variant.get("dp_check")
    if check:
        state = "consistent" if check["consistent"] else "INCONSISTENT"
        parts.append(f"DP claim {state}: empirical ε ≥ {check['empirical_epsilon_lower_bound']:.2f} "
                     f"vs claimed {check['claimed_epsilon']:.2f}")
    return parts or ["no applicable attack"]
