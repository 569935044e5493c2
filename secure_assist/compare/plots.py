"""Trade-off plots of a sweep (PNG, matplotlib Agg): accuracy vs ε, leakage vs ε, cost per variant.

Each series is a point's name without ε (mechanism plus any other swept axis). Series of
mechanisms that read no ε are one point each, drawn as horizontal lines across the ε range.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from protocol.files import write_atomic  # noqa: E402

PLOT_FILES = ("accuracy_vs_epsilon.png", "leakage_vs_epsilon.png", "cost_vs_variant.png")
COST_PANELS = (("upload_bytes_per_sample", "upload bytes / sample"), ("device_seconds", "device s"),
               ("server_seconds", "server s"))


def _series(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for point in points:
        groups[point["series"]].append(point)
    return {name: sorted(group, key=lambda p: p["axes"]["epsilon"] or 0.0) for name, group in groups.items()}


def _save(figure: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_atomic(path, buffer.getvalue())


def _epsilon_axis(axis: plt.Axes, ylabel: str, points: list[dict[str, Any]]) -> None:
    epsilons = sorted({p["axes"]["epsilon"] for p in points if p["axes"]["epsilon"] is not None})
    if epsilons:
        axis.set_xscale("log")
        axis.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel("target ε per sample" if epsilons else "(no mechanism in this sweep reads ε)")
    axis.set_ylabel(ylabel)
    axis.legend(fontsize=7, loc="best")
    axis.grid(alpha=0.3)


def accuracy_plot(points: list[dict[str, Any]], path: Path) -> None:
    """Eval accuracy vs ε, one line per series; the backbone's zero-shot accuracy dashed."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for (name, group), color in zip(_series(points).items(), plt.cm.tab10.colors * 10):
        accuracy = [p["utility"]["accuracy"] for p in group]
        if group[0]["axes"]["epsilon"] is None:
            axis.axhline(accuracy[0], color=color, ls=":", label=name)
        else:
            axis.plot([p["axes"]["epsilon"] for p in group], accuracy, "o-", color=color, label=name)
    for zero_shot in sorted({p["utility"]["zero_shot_accuracy"] for p in points}):
        axis.axhline(zero_shot, color="gray", ls="--", label=f"zero-shot {zero_shot:.1%}")
    _epsilon_axis(axis, "eval accuracy", points)
    _save(figure, path)


def leakage_plot(points: list[dict[str, Any]], path: Path) -> None:
    """Best label attack's balanced accuracy vs ε with 95% CI bars; the activations-only baseline dashed."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for (name, group), color in zip(_series(points).items(), plt.cm.tab10.colors * 10):
        scored = [p for p in group if p["leakage"]["best"] is not None]
        best = [p["leakage"]["best"] for p in scored]
        if scored and group[0]["axes"]["epsilon"] is None:
            axis.axhline(best[0]["balanced_accuracy"], color=color, ls=":", label=name)
            axis.axhspan(*best[0]["balanced_accuracy_ci95"], color=color, alpha=0.15)
        elif scored:
            value = [b["balanced_accuracy"] for b in best]
            errors = [[v - b["balanced_accuracy_ci95"][0] for v, b in zip(value, best)],
                      [b["balanced_accuracy_ci95"][1] - v for v, b in zip(value, best)]]
            axis.errorbar([p["axes"]["epsilon"] for p in scored], value, yerr=errors, fmt="o-", color=color,
                          capsize=3, label=name)
    baselines = [p["leakage"]["activations_only_baseline"] for p in points]
    if any(b is not None for b in baselines):
        # One line: the best activations-only attack over all points (it does not depend on Δ's protection).
        level = max(b["balanced_accuracy"] for b in baselines if b is not None)
        axis.axhline(level, color="gray", ls="--", label=f"activations only {level:.1%}")
    axis.set_ylim(0, 1.02)
    _epsilon_axis(axis, "label-attack balanced accuracy", points)
    _save(figure, path)


def cost_plot(points: list[dict[str, Any]], path: Path) -> None:
    """Upload bytes per sample, device seconds and server seconds per point."""
    names = [p["label"] for p in points]
    figure, axes = plt.subplots(1, len(COST_PANELS), figsize=(4 + 0.5 * len(points), 4), squeeze=False)
    for axis, (key, title) in zip(axes[0], COST_PANELS):
        # A reference row that uploads nothing has no server seconds: drawn as 0.
        axis.bar(range(len(points)), [p["cost"][key] or 0.0 for p in points], color="tab:blue")
        axis.set_xticks(range(len(points)), names, rotation=60, ha="right", fontsize=7)
        axis.set_title(title)
    _save(figure, path)


def write_plots(compare: dict[str, Any], output: Path | str) -> list[Path]:
    """The three PNGs under `output` (nothing is drawn for a sweep with no finished point)."""
    points = [p for p in compare["points"] if p["status"] == "ok"]
    if not points:
        return []
    paths = [Path(output) / name for name in PLOT_FILES]
    for draw, path in zip((accuracy_plot, leakage_plot, cost_plot), paths):
        draw(points, path)
    return paths
