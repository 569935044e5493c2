"""The audit report's plots, as base64 PNGs: the privacy–utility plot first, then the
leakage per attack and the upload cost per variant; a many-device report's accuracy per device."""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from attacks.base import LABELS  # noqa: E402
from secure_assist.audit.rows import row_value  # noqa: E402
from secure_assist.audit.summary import report_metric, rows_of  # noqa: E402
from secure_assist.audit.verdict import HEADLINES, LEAK_WORDS, best_leak  # noqa: E402

# The first plot's title (classification; `privacy_utility_title` names a generation report's).
PRIVACY_UTILITY = "Privacy–utility: accuracy vs best label attack"


def _png(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _chance(report: dict[str, Any], kind: str) -> float:
    """Where no leak sits on a leak axis: 1/C for labels, the largest most-frequent-token share for answer tokens."""
    if kind == LABELS:
        return 1.0 / report["data"]["classes"]
    return max((r["chance_baseline"] for v in report["variants"] if v["status"] == "ok" for r in v["attacks"]
                if r["status"] == "ok" and r["kind"] == kind), default=0.0)


def privacy_utility_title(report: dict[str, Any]) -> str:
    """The privacy–utility plot's title in the report's utility and leak."""
    metric = report_metric(report)
    if metric.leak_kind == LABELS:
        return PRIVACY_UTILITY
    return f"Privacy–utility: {metric.label} vs best {LEAK_WORDS[metric.leak_kind][2]} attack"


def privacy_utility(report: dict[str, Any]) -> str:
    """x: the best leak attack's metric on the row's server view (balanced accuracy of a label
    attack, token accuracy of an answer-token attack; chance for rows that upload nothing), y: the
    eval utility with its 95% CI; zero-shot and the activations-only baseline as lines."""
    rows = rows_of(report)
    utility = report_metric(report)
    kind = utility.leak_kind
    metric, interval, _ = HEADLINES[kind]
    chance = _chance(report, kind)
    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    for row, color in zip(rows, plt.cm.tab10.colors * 5):
        leak = best_leak(row)
        x = chance if leak is None else leak[metric]
        xerr = None if leak is None else [[x - leak[interval][0]], [leak[interval][1] - x]]
        y, (low, high) = row_value(row)
        axis.errorbar([x], [y], yerr=[[y - low], [high - y]], xerr=xerr, fmt="s" if row.get("reference") else "o",
                      color=color, capsize=3, label=row["variant"] + (" (uploads nothing)" if row.get("reference")
                                                                       else ""))
    zero = row_value(next(r for r in report["references"] if r["variant"] == "zero_shot"))[0]
    axis.axhline(zero, color="gray", ls="--", lw=1, label=f"zero-shot {utility.text(zero)}")
    baselines = [v["activations_only_baseline"][metric] for v in report["variants"]
                 if v["status"] == "ok" and v["activations_only_baseline"]]
    if baselines:
        # The server reads this much from the activations alone, whatever protects Δ (or r).
        axis.axvline(max(baselines), color="tab:red", ls=":", lw=1, label=f"activations only {max(baselines):.1%}")
    axis.axvline(chance, color="black", ls="-", lw=0.5, alpha=0.4)
    axis.set_xlim(chance - 0.03, 1.03)
    axis.set_xlabel(f"best {LEAK_WORDS[kind][2]} attack on the server's view ({LEAK_WORDS[kind][3]}; "
                    "chance = no leak)")
    axis.set_ylabel(f"eval {utility.label} (95% CI{'' if utility.higher_is_better else '; lower is better'})")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the points, never over them
    return _png(figure)


def label_leakage(report: dict[str, Any]) -> str:
    """The leak metric of every label (answer-token) attack per variant, with CIs and the chance line."""
    kind = report_metric(report).leak_kind
    metric, interval, _ = HEADLINES[kind]
    variants = [v for v in report["variants"] if v["status"] == "ok"]
    names = sorted({r["attack"] for v in variants for r in v["attacks"] if r["status"] == "ok" and r["kind"] == kind})
    figure, axis = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        rows = {r["attack"]: r for r in variant["attacks"] if r["status"] == "ok"}
        values = [rows[a][metric] if a in rows else 0.0 for a in names]
        errors = [[v - rows[a][interval][0] if a in rows else 0 for a, v in zip(names, values)],
                  [rows[a][interval][1] - v if a in rows else 0 for a, v in zip(names, values)]]
        axis.bar([j + i * width for j in range(len(names))], values, width, yerr=errors, label=variant["variant"],
                 capsize=2)
    axis.axhline(_chance(report, kind), color="gray", ls=":",
                 label="chance (no leak)" if kind == LABELS else "most frequent answer token")
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30, ha="right", fontsize=7)
    axis.set_ylabel(f"{LEAK_WORDS[kind][3]} (95% CI)")
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


MEMBERSHIP_ROC = "Membership inference: ROC of the strongest attack on each row's deployed model (log-log)"


def membership_roc(report: dict[str, Any]) -> str:
    """TPR against FPR on log-log axes (where the few records that leak show) of each row's
    strongest membership attack (highest TPR at 1% FPR), with the chance diagonal."""
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for row in rows_of(report):
        membership = row.get("membership") or {}
        best = next((a for a in membership.get("attacks", []) if a["attack"] == membership["best_attack"]), None)
        if best is not None:
            # A TPR of 0 has no place on log axes: it is drawn on the bottom edge.
            axis.plot(best["roc"]["fpr"], [max(t, 1e-4) for t in best["roc"]["tpr"]],
                      label=f"{row['variant']} ({best['attack']}, AUC {best['auc']:.2f})")
    axis.plot([1e-3, 1], [1e-3, 1], color="gray", ls=":", label="chance")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlim(1e-3, 1)
    axis.set_ylim(1e-4, 1.05)
    axis.set_xlabel("false-positive rate (non-members called members)")
    axis.set_ylabel("true-positive rate (members found)")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(figure)


def plots(report: dict[str, Any]) -> dict[str, str]:
    """title -> base64 PNG, the privacy–utility plot first (the membership ROC when rows have one)."""
    leak = LEAK_WORDS[report_metric(report).leak_kind][2]
    images = {privacy_utility_title(report): privacy_utility(report),
              f"{leak.capitalize()} leakage per attack": label_leakage(report),
              "Upload and device cost per row": upload_cost(report)}
    if any((row.get("membership") or {}).get("status") == "ok" for row in rows_of(report)):
        images[MEMBERSHIP_ROC] = membership_roc(report)
    return images


DEVICE_ACCURACY = "Accuracy per device, each row (box: quartiles over devices; dots: devices)"


def device_accuracy(report: dict[str, Any]) -> str:
    """A many-device report's per-device accuracy of every row that ran, on the common evaluation split
    (left) and on each device's own distribution (right): one box and one dot per device."""
    rows = [r for r in report["rows"] if r["status"] == "ok"]
    names = [r["variant"] for r in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for axis, (key, title) in zip(axes, (("accuracy", "common evaluation split"),
                                         ("own_accuracy", "each device's own distribution"))):
        values = [[d[key] for d in r["per_device"]] for r in rows]
        axis.boxplot(values, widths=0.5, showfliers=False)
        jitter = np.random.default_rng(0)  # fixed: the same report draws the same picture
        for position, column in enumerate(values, start=1):
            axis.scatter(position + jitter.uniform(-0.15, 0.15, len(column)), column, s=9, alpha=0.6, color="tab:blue")
        axis.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=7)
        axis.set_title(title, fontsize=9)
        axis.set_ylim(0, 1.02)
    axes[0].set_ylabel("accuracy per device")
    return _png(figure)
