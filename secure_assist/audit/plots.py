"""The audit report's plots, as base64 PNGs: the privacy–utility plot first, then the
leakage per attack and the upload cost per variant."""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402

from secure_assist.audit.summary import rows_of  # noqa: E402

PRIVACY_UTILITY = "Privacy–utility: accuracy vs best label attack"


def _png(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def privacy_utility(report: dict[str, Any]) -> str:
    """x: the best label attack's balanced accuracy on the row's server view (chance for rows that
    upload nothing), y: eval accuracy with its 95% CI; zero-shot and the activations-only baseline as lines."""
    rows = rows_of(report)
    chance = 1.0 / report["data"]["classes"]
    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    for row, color in zip(rows, plt.cm.tab10.colors * 5):
        leak = row.get("best_label_leak")
        x = chance if leak is None else leak["balanced_accuracy"]
        xerr = None if leak is None else [[x - leak["balanced_accuracy_ci95"][0]],
                                          [leak["balanced_accuracy_ci95"][1] - x]]
        y, (low, high) = row["utility"]["accuracy"], row["utility"]["accuracy_ci95"]
        axis.errorbar([x], [y], yerr=[[y - low], [high - y]], xerr=xerr, fmt="s" if row.get("reference") else "o",
                      color=color, capsize=3, label=row["variant"] + (" (uploads nothing)" if row.get("reference")
                                                                       else ""))
    zero = next(r for r in report["references"] if r["variant"] == "zero_shot")["utility"]["accuracy"]
    axis.axhline(zero, color="gray", ls="--", lw=1, label=f"zero-shot {zero:.1%}")
    baselines = [v["activations_only_baseline"]["balanced_accuracy"] for v in report["variants"]
                 if v["status"] == "ok" and v["activations_only_baseline"]]
    if baselines:
        # The server reads this much from the activations alone, whatever protects Δ.
        axis.axvline(max(baselines), color="tab:red", ls=":", lw=1, label=f"activations only {max(baselines):.1%}")
    axis.axvline(chance, color="black", ls="-", lw=0.5, alpha=0.4)
    axis.set_xlim(chance - 0.03, 1.03)
    axis.set_xlabel("best label attack on the server's view (balanced accuracy; chance = no leak)")
    axis.set_ylabel("eval accuracy (95% CI)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the points, never over them
    return _png(figure)


def label_leakage(report: dict[str, Any]) -> str:
    """Balanced accuracy of every label attack per variant, with CIs and the chance line."""
    variants = [v for v in report["variants"] if v["status"] == "ok"]
    names = sorted({r["attack"] for v in variants for r in v["attacks"] if r["status"] == "ok" and r["kind"] == "labels"})
    figure, axis = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        rows = {r["attack"]: r for r in variant["attacks"] if r["status"] == "ok"}
        values = [rows[a]["balanced_accuracy"] if a in rows else 0.0 for a in names]
        errors = [[v - rows[a]["balanced_accuracy_ci95"][0] if a in rows else 0 for a, v in zip(names, values)],
                  [rows[a]["balanced_accuracy_ci95"][1] - v if a in rows else 0 for a, v in zip(names, values)]]
        axis.bar([j + i * width for j in range(len(names))], values, width, yerr=errors, label=variant["variant"],
                 capsize=2)
    axis.axhline(1.0 / report["data"]["classes"], color="gray", ls=":", label="chance (no leak)")
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30, ha="right", fontsize=7)
    axis.set_ylabel("balanced accuracy (95% CI)")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(figure)


def upload_cost(report: dict[str, Any]) -> str:
    """Upload bytes per sample and device seconds of every row."""
    rows = rows_of(report)
    names = [r["variant"] for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.bar(names, [r["cost"]["upload_bytes_per_sample"] / 1024 for r in rows], color="tab:orange")
    left.set_ylabel("upload KiB per sample")
    right.bar(names, [r["cost"]["device_seconds"] for r in rows], color="tab:green")
    right.set_ylabel("device seconds")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=35, labelsize=7)
    return _png(figure)


def plots(report: dict[str, Any]) -> dict[str, str]:
    """title -> base64 PNG, the privacy–utility plot first."""
    return {PRIVACY_UTILITY: privacy_utility(report), "Label leakage per attack": label_leakage(report),
            "Upload and device cost per row": upload_cost(report)}
