"""The sweep as a table: one row per point, written as Markdown and CSV."""

from __future__ import annotations

import csv
import io
from typing import Any

# The columns of compare.csv; a skipped point leaves its numbers empty.
# Leakage is balanced accuracy (chance 1/C whatever the class balance); the best attack's plain accuracy is beside it.
COLUMNS = ("point", "status", "n_train", "accuracy", "zero_shot_accuracy", "delta_vs_zero_shot", "best_label_attack",
           "leak_balanced_accuracy", "leak_ci_low", "leak_ci_high", "leak_accuracy", "delta_attack_balanced_accuracy",
           "activations_only_balanced_accuracy", "upload_bytes_per_sample", "device_seconds", "server_seconds", "cached")


def rows(compare: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per point with the COLUMNS."""
    out = []
    for point in compare["points"]:
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row.update(point=point["label"], status=point["status"], cached=point["cached"])
        if point["status"] == "ok":
            utility, cost, leak = point["utility"], point["cost"], point["leakage"]
            row.update(n_train=utility["n_train"], accuracy=utility["accuracy"],
                       zero_shot_accuracy=utility["zero_shot_accuracy"],
                       delta_vs_zero_shot=utility["delta_vs_zero_shot"],
                       upload_bytes_per_sample=cost["upload_bytes_per_sample"],
                       device_seconds=cost["device_seconds"], server_seconds=cost["server_seconds"])
            if leak["best"] is not None:
                best = leak["best"]
                row.update(best_label_attack=best["attack"], leak_balanced_accuracy=best["balanced_accuracy"],
                           leak_ci_low=best["balanced_accuracy_ci95"][0], leak_ci_high=best["balanced_accuracy_ci95"][1],
                           leak_accuracy=best["accuracy"])
            if leak["best_delta"] is not None:
                row["delta_attack_balanced_accuracy"] = leak["best_delta"]["balanced_accuracy"]
            if leak["activations_only_baseline"] is not None:
                row["activations_only_balanced_accuracy"] = leak["activations_only_baseline"]["balanced_accuracy"]
        else:
            row["best_label_attack"] = point.get("reason")
        out.append(row)
    return out


def to_csv(compare: dict[str, Any]) -> str:
    """compare.csv: full-precision values, empty cells where a point has none."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(compare))
    return buffer.getvalue()


def _cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if column in ("accuracy", "zero_shot_accuracy", "leak_balanced_accuracy", "leak_accuracy",
                  "delta_attack_balanced_accuracy", "activations_only_balanced_accuracy"):
        return f"{value:.1%}"
    if column == "delta_vs_zero_shot":
        return f"{value:+.1%}"
    if column in ("device_seconds", "server_seconds"):
        return f"{value:.2f}"
    if column == "upload_bytes_per_sample":
        return f"{value:,.0f}"
    return str(value)


def to_markdown(compare: dict[str, Any]) -> str:
    """compare.md: the table with the leakage CI in one cell, and how many points were reused."""
    headers = ["point", "status", "n train", "accuracy", "zero-shot", "Δ vs zero-shot", "best label attack",
               "leak balanced acc [95% CI]", "its accuracy", "best Δ attack (bal.)", "activations-only (bal.)",
               "upload B/sample", "device s", "server s", "cached"]
    lines = ["# secure-assist compare", "",
             f"{len(compare['points'])} points: {compare['computed']} computed, {compare['cached']} cached, "
             f"{compare['skipped']} skipped, {compare['failed']} failed; wall time {compare['wall_seconds']:.0f} s.",
             "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows(compare):
        leak = "" if row["leak_balanced_accuracy"] is None else (
            f"{row['leak_balanced_accuracy']:.1%} [{row['leak_ci_low']:.1%}, {row['leak_ci_high']:.1%}]")
        cells = [_cell(row[c], c) for c in ("point", "status", "n_train", "accuracy", "zero_shot_accuracy",
                                            "delta_vs_zero_shot", "best_label_attack")]
        cells += [leak] + [_cell(row[c], c) for c in ("leak_accuracy", "delta_attack_balanced_accuracy",
                                                      "activations_only_balanced_accuracy", "upload_bytes_per_sample",
                                                      "device_seconds", "server_seconds", "cached")]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    if "devices" in compare:  # compare --devices N: the many-device rows beside the points
        from secure_assist.audit.device_report import SUMMARY_HEADER, summary_table
        from secure_assist.audit.report import markdown_table

        section = compare["devices"]
        lines += [""] + markdown_table(f"{section['devices']} devices ({section['partition']}): rows per device",
                                       SUMMARY_HEADER, summary_table(section))
    return "\n".join(lines) + "\n"
