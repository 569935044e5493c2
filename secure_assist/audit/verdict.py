"""The headline number of each attack row and the one-line verdict of each variant."""

from __future__ import annotations

from typing import Any

from attacks.base import ALIGNMENT, ANSWER_TOKENS, EXTRACTION, LABELS, RECONSTRUCTION, SCORES
from secure_assist.audit.rotation_verdict import rotation_clauses
from secure_assist.audit.rows import row_metric, row_value

# kind -> (metric, its 95% CI key, the baseline it is read against). Label attacks are read
# by balanced accuracy (chance 1/C whatever the class balance): on a task with a 90%
# majority class, plain accuracy gives a constant guess 90% and hides or fakes a leak.
HEADLINES = {
    LABELS: ("balanced_accuracy", "balanced_accuracy_ci95", "balanced_chance"),
    SCORES: ("auc", "ci95", "chance"),
    RECONSTRUCTION: ("token_f1", "token_f1_ci95", None),
    EXTRACTION: ("agreement", "agreement_ci95", "backbone_only_agreement"),
    ALIGNMENT: ("centred_state_cosine", "centred_state_cosine_ci95", "unaligned_centred_state_cosine"),
    ANSWER_TOKENS: ("token_accuracy", "token_accuracy_ci95", "frequency_baseline"),
}


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """metric name, value, CI and chance/prior baseline of one scored attack report."""
    metric, interval, baseline = HEADLINES[report["kind"]]
    return {"metric": metric, "value": report[metric], "value_ci95": list(report[interval]),
            "chance_baseline": report.get(baseline) if baseline else 0.0}


# The attack kind whose leak a variant's row sets against its utility -> the row's key of its
# best attack of that kind (labels for classification, answer tokens for generation).
LEAK_FIELDS = {LABELS: "best_label_leak", ANSWER_TOKENS: "best_answer_token_leak"}
# How verdicts name a leak: kind -> (what leaks, the uploaded signal it leaks through, adjective, metric words).
LEAK_WORDS = {LABELS: ("LABELS", "Δ", "label", "balanced accuracy"),
              ANSWER_TOKENS: ("ANSWER TOKENS", "r", "answer-token", "token accuracy")}
# A leak whose metric's CI reaches this lower bound recovers (nearly) everything: a full leak.
FULL_LEAK = 0.95


def leak_level(row: dict[str, Any]) -> str:
    """'no leak' (the leak metric not above its chance at 95%), 'full leak' or 'partial leak' of a
    label or answer-token attack row (or its leak summary)."""
    metric, interval, chance = HEADLINES[row.get("kind", LABELS)]
    low = row[interval][0]
    if low <= row[chance]:
        return "no leak"
    return "full leak" if low >= FULL_LEAK else "partial leak"


def leak_text(row: dict[str, Any]) -> str:
    """'attack balanced accuracy 91.0% [88.0%, 94.0%]' of a label or answer-token row."""
    kind = row.get("kind", LABELS)
    metric, interval, _ = HEADLINES[kind]
    low, high = row[interval]
    return f"{row['attack']} {LEAK_WORDS[kind][3]} {row[metric]:.1%} [{low:.1%}, {high:.1%}]"


def best_leak(row: dict[str, Any]) -> dict[str, Any] | None:
    """The leak summary of a variant's best attack of the kind its task leaks (None: none applies)."""
    return next((row[field] for field in LEAK_FIELDS.values() if row.get(field)), None)




def seconds_text(value: float) -> str:
    """Seconds, whole above 10."""
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"


def saved_text(saved: float, reference: float) -> str:
    """Device seconds saved against device_local (negative: the variant costs the device more)."""
    share = f" ({100 * abs(saved) / reference:.0f}% of device_local's)" if reference > 0 else ""
    if saved >= 0:
        return f"saves {seconds_text(saved)} device seconds{share}"
    return f"costs {seconds_text(-saved)} more device seconds{share}"


def difference_text(entry: dict[str, Any], row: dict[str, Any]) -> str:
    """'+3.1 points [+1.2, +5.0]' (accuracy) or '-0.120 nats/token [-0.150, -0.090]' (answer NLL)
    of a paired comparison in `row`'s utility."""
    metric = row_metric(row)
    low, high = entry["ci95"]
    return f"{metric.signed(entry['difference'])} {metric.unit} [{metric.signed(low)}, {metric.signed(high)}]"


def utility_text(variant: dict[str, Any]) -> str:
    """Utility with CI, vs zero-shot and what the server buys over device_local."""
    metric, cost = row_metric(variant), variant["cost"]
    value, (low, high) = row_value(variant)
    zero, local = variant["utility"]["vs_zero_shot"], variant["utility"]["vs_device_local"]
    if metric.higher_is_better:
        state = {"above": "significantly above", "below": "significantly below",
                 "no": "not significantly different from"}[zero["significant"]]
    else:
        state = {"better": "significantly better than", "worse": "significantly worse than",
                 "no": "not significantly different from"}[metric.judge(zero)]
    return (f"{metric.label} {metric.text(value)} [{metric.text(low)}, {metric.text(high)}], {state} zero-shot "
            f"({difference_text(zero, variant)}); what the server buys over device_local: "
            f"{difference_text(local, variant)}, and it "
            f"{saved_text(cost['device_seconds_saved'], cost['device_seconds'] + cost['device_seconds_saved'])}")


def verdict(variant: dict[str, Any]) -> str:
    """One line: utility against the references, then what the server view leaks (`leak_clauses`)."""
    return "; ".join([utility_text(variant), *leak_clauses(variant)])


def leak_clauses(variant: dict[str, Any]) -> list[str]:
    """Whether the signal the task uploads (Δ for labels, r for answer tokens) leaks beyond the
    activations-only baseline, the model and inputs, whether a rotation holds, and whether the
    DP claim is consistent (from the variant's `attacks`, `activations_only_baseline`,
    `utility.metric`, `utility.mechanisms` and `dp_check`)."""
    rows = [r for r in variant["attacks"] if r["status"] == "ok"]
    baseline = variant["activations_only_baseline"]
    kind = row_metric(variant).leak_kind
    what, signal, leak, _ = LEAK_WORDS[kind]
    metric, interval, _ = HEADLINES[kind]
    signal_rows = [r for r in rows if r["kind"] == kind and not r["activations_only"]]
    not_applicable = [r for r in variant["attacks"] if r["status"] == "not_applicable"]
    parts: list[str] = []
    if signal_rows and baseline:
        best = max(signal_rows, key=lambda r: r[metric])
        text = f"{leak_text(best)} vs activations-only {baseline[metric]:.1%}"
        if best[interval][0] > baseline[metric]:
            parts.append(f"{what} LEAK through {signal}: {text}")
        else:
            parts.append(f"{signal} adds no measurable {leak} leakage: {text}")
    elif baseline and not_applicable:
        # E.g. he_ckks: Δ never reaches the server in the clear, so only activations-only attacks run.
        parts.append(f"{signal} adds no measurable {leak} leakage: no {signal}-based attack applies "
                     f"({len(not_applicable)} not applicable); best {leak} attack is activations-only "
                     f"{leak_text(baseline)}")
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
