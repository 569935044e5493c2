"""The decision page's summary: one table row per reference row and variant, and the
report's conclusions, every sentence derived from the numbers."""

from __future__ import annotations

from typing import Any

from attacks.base import EXTRACTION, RECONSTRUCTION
from secure_assist.audit.verdict import difference_text, leak_level, saved_text, seconds_text

SUMMARY_HEADER = ("variant", "accuracy (95% CI)", "vs device_local", "best label leak vs activations-only", "inputs",
                  "model", "device s", "bytes up / down")


def rows_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Reference rows first, then the audited variants (skipped ones left out)."""
    return report["references"] + [v for v in report["variants"] if v["status"] == "ok"]


def _leak_cell(row: dict[str, Any]) -> str:
    if row.get("reference"):
        return "none: nothing uploaded"
    best, base = row["best_label_leak"], row["activations_only_baseline"]
    if best is None:
        return "no label attack applies"
    low, high = best["balanced_accuracy_ci95"]
    text = f"{best['attack']} {best['balanced_accuracy']:.1%} [{low:.1%}, {high:.1%}] ({leak_level(best)})"
    return text + (f" vs {base['balanced_accuracy']:.1%}" if base else "")


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


def summary_table(report: dict[str, Any]) -> list[list[str]]:
    """variant | accuracy (CI) | vs device_local | best label leak vs activations-only | inputs | model |
    device s | bytes: one row per reference row and variant."""
    table = []
    for row in rows_of(report):
        utility, cost = row["utility"], row["cost"]
        low, high = utility["accuracy_ci95"]
        local = "reference" if row["variant"] == "device_local" else difference_text(utility["vs_device_local"])
        table.append([row["variant"], f"{utility['accuracy']:.1%} [{low:.1%}, {high:.1%}]", local, _leak_cell(row),
                      _inputs_cell(row), _model_cell(row), seconds_text(cost["device_seconds"]),
                      f"{cost['bytes_up']:,} / {cost['bytes_down']:,}"])
    return table


def conclusions(report: dict[str, Any]) -> list[str]:
    """The answers a user comes for, as sentences computed from the report's numbers."""
    references = {r["variant"]: r for r in report["references"]}
    local, zero = references["device_local"], references["zero_shot"]
    variants = [v for v in report["variants"] if v["status"] == "ok"]
    out = [f"zero-shot (the backbone alone) scores {zero['utility']['accuracy']:.1%}; device_local (the same side "
           f"network trained on the device, nothing uploaded) scores {local['utility']['accuracy']:.1%} "
           f"({difference_text(local['utility']['vs_zero_shot'])} vs zero-shot) for "
           f"{seconds_text(local['cost']['device_seconds'])} device seconds."]
    if "local_lora" in references:
        lora = references["local_lora"]
        out.append(f"local_lora scores {lora['utility']['accuracy']:.1%} "
                   f"({difference_text(lora['utility']['vs_device_local'])} vs device_local) for "
                   f"{seconds_text(lora['cost']['device_seconds'])} device seconds.")
    protected = [v for v in variants if v["mechanism"] != "none"]
    deployed = [v for v in protected if v["utility"]["vs_zero_shot"]["significant"] == "above"]
    if deployed:
        best = max(deployed, key=lambda v: v["utility"]["accuracy"])
        out.append(f"Protected variants significantly above zero-shot: {', '.join(v['variant'] for v in deployed)}; "
                   f"the most accurate is {best['variant']} at {best['utility']['accuracy']:.1%} "
                   f"({difference_text(best['utility']['vs_zero_shot'])} vs zero-shot).")
    elif protected:
        out.append("No protected variant is significantly above zero-shot on this data.")
    for variant in variants:
        versus = variant["utility"]["vs_device_local"]
        saved = variant["cost"]["device_seconds_saved"]
        buys = ("more accuracy" if versus["significant"] == "above" else "less accuracy"
                if versus["significant"] == "below" else "no measurable accuracy")
        out.append(f"{variant['variant']}: the server buys {buys} over device_local ({difference_text(versus)}) and "
                   f"{saved_text(saved, local['cost']['device_seconds'])}, against what its server view leaks: "
                   f"{_leak_cell(variant)}.")
    inconsistent = [v["variant"] for v in variants if v.get("dp_check") and not v["dp_check"]["consistent"]]
    if inconsistent:
        out.append(f"DP claims INCONSISTENT with the measured ε lower bound: {', '.join(inconsistent)}.")
    return out
