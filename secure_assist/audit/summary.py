"""The decision page's summary: one table row per reference row and variant, and the
report's conclusions, every sentence derived from the numbers.

Rows are read in the task's utility metric (`secure_assist.audit.rows.UtilityMetric`):
accuracy for classification, the answer NLL per token for generation (lower is better),
and their leak is the label or the answer-token leak."""

from __future__ import annotations

from typing import Any

from attacks.base import EXTRACTION, LABELS, RECONSTRUCTION
from secure_assist.audit.rows import UtilityMetric, row_metric, row_value
from secure_assist.audit.verdict import (
    HEADLINES, LEAK_WORDS, best_leak, difference_text, leak_level, saved_text, seconds_text,
)


# The summary table's columns of a classification report (`summary_header` names a generation report's).
SUMMARY_HEADER = ("variant", "accuracy (95% CI)", "vs device_local", "best label leak vs activations-only", "inputs",
                  "model", "device s", "bytes up / down")


def report_metric(report: dict[str, Any]) -> UtilityMetric:
    """The utility metric every row of the report was scored with."""
    return row_metric(report["references"][0])


def summary_header(report: dict[str, Any]) -> tuple[str, ...]:
    """The summary table's columns, named after the report's utility and leak."""
    metric = report_metric(report)
    if metric.leak_kind == LABELS:
        return SUMMARY_HEADER
    return ("variant", f"{metric.label} (95% CI)", "vs device_local",
            f"best {LEAK_WORDS[metric.leak_kind][2]} leak vs activations-only", "inputs", "model", "device s",
            "bytes up / down")


def rows_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Reference rows first, then the audited variants (skipped ones left out)."""
    return report["references"] + [v for v in report["variants"] if v["status"] == "ok"]


def _leak_cell(row: dict[str, Any]) -> str:
    if row.get("reference"):
        return "none: nothing uploaded"
    best, base = best_leak(row), row["activations_only_baseline"]
    kind = row_metric(row).leak_kind
    if best is None:
        return f"no {LEAK_WORDS[kind][2]} attack applies"
    metric, interval, _ = HEADLINES[kind]
    low, high = best[interval]
    text = f"{best['attack']} {best[metric]:.1%} [{low:.1%}, {high:.1%}] ({leak_level(best)})"
    return text + (f" vs {base[metric]:.1%}" if base else "")


def _best(row: dict[str, Any], kind: str, metric: str) -> dict[str, Any] | None:
    scored = [r for r in row["attacks"] if r["status"] == "ok" and r["kind"] == kind]
    return max(scored, key=lambda r: r[metric], default=None)


def _inputs_cell(row: dict[str, Any]) -> str:
    if row.get("reference"):
        return "–"
    best = _best(row, RECONSTRUCTION, "token_f1")
    return "–" if best is None else f"{best['attack']} token F1 {best['token_f1']:.2f}"


def _model_cell(row: dict[str, Any]) -> str:
    if row.get("reference"):
        return "stays on the device"
    best = _best(row, EXTRACTION, "agreement")
    return "–" if best is None else (f"server copy agrees {best['agreement']:.1%} (backbone alone "
                                     f"{best['backbone_only_agreement']:.1%})")


def _value_cell(row: dict[str, Any]) -> str:
    metric = row_metric(row)
    value, (low, high) = row_value(row)
    return f"{metric.text(value)} [{metric.text(low)}, {metric.text(high)}]"


def summary_table(report: dict[str, Any]) -> list[list[str]]:
    """variant | utility (CI) | vs device_local | best leak vs activations-only | inputs | model |
    device s | bytes: one row per reference row and variant."""
    table = []
    for row in rows_of(report):
        utility, cost = row["utility"], row["cost"]
        local = "reference" if row["variant"] == "device_local" else difference_text(utility["vs_device_local"], row)
        table.append([row["variant"], _value_cell(row), local, _leak_cell(row), _inputs_cell(row), _model_cell(row),
                      seconds_text(cost["device_seconds"]), f"{cost['bytes_up']:,} / {cost['bytes_down']:,}"])
    return table


def conclusions(report: dict[str, Any]) -> list[str]:
    """The answers a user comes for, as sentences computed from the report's numbers."""
    references = {r["variant"]: r for r in report["references"]}
    local, zero = references["device_local"], references["zero_shot"]
    metric = report_metric(report)
    scores = f"scores {metric.label} " if not metric.higher_is_better else "scores "
    variants = [v for v in report["variants"] if v["status"] == "ok"]
    out = [f"zero-shot (the backbone alone) {scores}{metric.text(row_value(zero)[0])}; device_local (the same side "
           f"network trained on the device, nothing uploaded) {scores}{metric.text(row_value(local)[0])} "
           f"({difference_text(local['utility']['vs_zero_shot'], local)} vs zero-shot) for "
           f"{seconds_text(local['cost']['device_seconds'])} device seconds."]
    if "local_lora" in references:
        lora = references["local_lora"]
        out.append(f"local_lora {scores}{metric.text(row_value(lora)[0])} "
                   f"({difference_text(lora['utility']['vs_device_local'], lora)} vs device_local) for "
                   f"{seconds_text(lora['cost']['device_seconds'])} device seconds.")
    protected = [v for v in variants if v["mechanism"] != "none"]
    deployed = [v for v in protected if metric.judge(v["utility"]["vs_zero_shot"]) == "better"]
    direction = "above" if metric.higher_is_better else "better than"
    best_word = "most accurate" if metric.higher_is_better else f"lowest {metric.label}"
    if deployed:
        best = (max if metric.higher_is_better else min)(deployed, key=lambda v: row_value(v)[0])
        out.append(f"Protected variants significantly {direction} zero-shot: "
                   f"{', '.join(v['variant'] for v in deployed)}; the {best_word} is {best['variant']} at "
                   f"{metric.text(row_value(best)[0])} ({difference_text(best['utility']['vs_zero_shot'], best)} vs "
                   "zero-shot).")
    elif protected:
        out.append(f"No protected variant is significantly {direction} zero-shot on this data.")
    for variant in variants:
        versus = variant["utility"]["vs_device_local"]
        saved = variant["cost"]["device_seconds_saved"]
        judged = metric.judge(versus)
        if metric.higher_is_better:
            buys = {"better": "more accuracy", "worse": "less accuracy", "no": "no measurable accuracy"}[judged]
        else:
            buys = {"better": f"a lower {metric.label}", "worse": f"a higher {metric.label}",
                    "no": f"no measurable change in {metric.label}"}[judged]
        out.append(f"{variant['variant']}: the server buys {buys} over device_local "
                   f"({difference_text(versus, variant)}) and {saved_text(saved, local['cost']['device_seconds'])}, "
                   f"against what its server view leaks: {_leak_cell(variant)}.")
    inconsistent = [v["variant"] for v in variants if v.get("dp_check") and not v["dp_check"]["consistent"]]
    if inconsistent:
        out.append(f"DP claims INCONSISTENT with the measured ε lower bound: {', '.join(inconsistent)}.")
    return out
