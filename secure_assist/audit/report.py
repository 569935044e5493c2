"""Write an audit report as JSON, Markdown and self-contained HTML (plots embedded as PNG)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402

from protocol.files import write_atomic  # noqa: E402

REPORT_FILES = ("report.json", "report.md", "report.html")


def _audited(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in report["variants"] if v["status"] == "ok"]


def _png(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def plots(report: dict[str, Any]) -> dict[str, str]:
    """title -> base64 PNG: utility, label leakage with CIs, and upload cost per variant."""
    variants = _audited(report)
    names = [v["variant"] for v in variants]
    out = {}
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.bar(names, [v["utility"]["value"] for v in variants], color="tab:blue", label="fine-tuned")
    if variants:
        axis.axhline(variants[0]["utility"]["zero_shot"], color="gray", ls="--", label="zero-shot")
        metric = variants[0]["utility"]["metric"]
        axis.set_ylabel("eval accuracy" if metric == "accuracy" else "eval answer NLL / token (lower is better)")
        if metric == "accuracy":
            axis.set_ylim(0, 1)
    axis.tick_params(axis="x", labelrotation=20)
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never over them
    out["Utility per variant"] = _png(figure)

    # Label attacks (classification) or answer-token attacks (generation): accuracy with its CI.
    generation = any(r["kind"] == "answer_tokens" for v in variants for r in v["attacks"] if r["status"] == "ok")
    kind = "answer_tokens" if generation else "labels"
    label_attacks = sorted({r["attack"] for v in variants for r in v["attacks"]
                            if r["status"] == "ok" and r["kind"] == kind})
    figure, axis = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        rows = {r["attack"]: r for r in variant["attacks"] if r["status"] == "ok"}
        values = [rows[a]["value"] if a in rows else 0.0 for a in label_attacks]
        errors = [[rows[a]["value"] - rows[a]["value_ci95"][0] if a in rows else 0 for a in label_attacks],
                  [rows[a]["value_ci95"][1] - rows[a]["value"] if a in rows else 0 for a in label_attacks]]
        axis.bar([j + i * width for j in range(len(label_attacks))], values, width, yerr=errors,
                 label=variant["variant"], capsize=2)
    priors = [r["chance_baseline"] for v in variants for r in v["attacks"]
              if r["status"] == "ok" and r["kind"] == kind and r.get("chance_baseline")]
    axis.axhline(max(priors, default=0.0 if generation else 0.5), color="gray", ls=":",
                 label="most frequent token" if generation else "chance (majority class)")
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(label_attacks))], label_attacks, rotation=30,
                    ha="right", fontsize=7)
    axis.set_ylabel(("answer-token" if generation else "label") + " attack accuracy (95% CI)")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    out[("Answer-token" if generation else "Label") + " leakage per attack"] = _png(figure)

    figure, axis = plt.subplots(figsize=(6, 3))
    axis.bar(names, [v["cost"]["upload_bytes_per_sample"] / 1024 for v in variants], color="tab:orange")
    axis.set_ylabel("upload KiB per sample")
    axis.tick_params(axis="x", labelrotation=20)
    out["Upload cost per variant"] = _png(figure)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "–" if value is None else str(value)


def _ci(row: dict[str, Any]) -> str:
    low, high = row["value_ci95"]
    return f"[{low:.3f}, {high:.3f}]"


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by the Markdown and HTML renderers."""
    variants = report["variants"]
    out = []
    summary = [[v["variant"], v["utility"]["metric"], _fmt(v["utility"]["value"]), _fmt(v["utility"]["zero_shot"]),
                f"{v['utility']['delta_vs_zero_shot']:+.3f}", f"{v['cost']['bytes_up']:,}",
                _fmt(v["cost"]["device_seconds"]), _fmt(v["cost"]["server_seconds"]),
                _fmt(v["cost"]["device_peak_rss_mib"]), v["verdict"]] for v in _audited(report)]
    out.append(("Variants", ["variant", "utility metric", "value", "zero-shot", "Δ vs zero-shot", "bytes up",
                             "device s", "server s", "device peak RSS MiB", "verdict"], summary))
    skipped = [[v["variant"], v["reason"]] for v in variants if v["status"] != "ok"]
    if skipped:
        out.append(("Skipped variants", ["variant", "reason"], skipped))
    dp = [[v["variant"], _fmt(v["dp_check"]["claimed_epsilon"]), _fmt(v["dp_check"]["empirical_epsilon_lower_bound"]),
           _fmt(v["dp_check"]["tpr"]), _fmt(v["dp_check"]["fpr"]),
           "consistent" if v["dp_check"]["consistent"] else "inconsistent"]
          for v in _audited(report) if v["dp_check"]]
    if dp:
        out.append(("DP claims", ["variant", "claimed ε", "empirical ε lower bound (95%)", "TPR", "FPR", "status"], dp))
    he = [[v["variant"], _fmt(v["cost"]["he_device_encrypt_ms_per_sample"]),
           f"{v['cost']['he_ciphertext_bytes_per_sample']:,.0f}", f"{v['cost']['he_public_context_bytes']:,}",
           _fmt(v["cost"]["he_server_fit_seconds"]), _fmt(v["cost"]["he_device_decrypt_seconds"])]
          for v in _audited(report) if "he_server_fit_seconds" in v["cost"]]
    if he:
        out.append(("CKKS costs", ["variant", "device encrypt ms/sample", "ciphertext bytes/sample",
                                   "public context bytes", "server fit s", "device decrypt s"], he))
    for variant in _audited(report):
        rows = []
        base = variant["activations_only_baseline"]
        if base:
            metric = base.get("metric", "accuracy")
            rows.append([f"activations-only baseline ({base['attack']})", base.get("kind", "labels"), metric,
                         _fmt(base[metric]), f"[{base['ci95'][0]:.3f}, {base['ci95'][1]:.3f}]", "–", "yes"])
        for r in variant["attacks"]:
            if r["status"] != "ok":
                rows.append([r["attack"], "–", "not applicable", "–", "–", "–", "–"])
                continue
            rows.append([r["attack"], r["kind"], r["metric"], _fmt(r["value"]), _ci(r), _fmt(r["chance_baseline"]),
                         "yes" if r["activations_only"] else "no"])
        out.append((f"Leakage: {variant['variant']}",
                    ["attack", "kind", "metric", "value", "95% CI", "chance/prior", "activations only"], rows))
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    lines = ["# secure-assist audit report", "",
             f"Schema `{report['schema']}` v{report['schema_version']}; config fingerprint "
             f"`{report['config_fingerprint']}`; seed {report['seed']}; model `{report['config']['model']}`; "
             f"wall time {report['wall_seconds']:.0f} s; DP claims "
             f"{'consistent' if report['consistent'] else 'INCONSISTENT'}.", ""]
    for title, header, rows in tables(report):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (no external resources)."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>secure-assist audit</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}</style></head><body>",
             "<h1>secure-assist audit report</h1>",
             f"<p>config fingerprint <code>{report['config_fingerprint']}</code>, seed {report['seed']}, "
             f"model <code>{html.escape(report['config']['model'])}</code>, wall time {report['wall_seconds']:.0f} s, "
             f"DP claims <b>{'consistent' if report['consistent'] else 'INCONSISTENT'}</b></p>"]
    for title, png in plots(report).items():
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src=\"data:image/png;base64,{png}\">")
    for title, header, rows in tables(report):
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append(f"<h2>Package versions</h2><pre>{html.escape(json.dumps(report['package_versions'], indent=1))}</pre>")
    return "\n".join(parts + ["</body></html>"])


def write_reports(report: dict[str, Any], folder: Path | str) -> list[Path]:
    """Write report.json, report.md and report.html into `folder`; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    contents = (json.dumps(report, indent=1, allow_nan=True), render_markdown(report), render_html(report))
    paths = [folder / name for name in REPORT_FILES]
    for path, text in zip(paths, contents):
        write_atomic(path, text.encode("utf-8"))
    return paths
