"""Write an audit report as JSON, Markdown and self-contained HTML (plots embedded as PNG).

The HTML page is a decision page: it opens with the summary table and the privacy–utility
plot, then the conclusions (sentences computed from the numbers), then the details.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from protocol.files import write_atomic
from secure_assist.audit.plots import plots, privacy_utility_title
from secure_assist.audit.rows import row_value
from secure_assist.audit.schema import DEVICE_SCHEMA
from secure_assist.audit.summary import report_metric, rows_of, summary_header, summary_table

REPORT_FILES = ("report.json", "report.md", "report.html")
SUMMARY_TITLE = "Summary: which protection, at what cost, and what the server buys"
HTML_HEAD = ("<!doctype html><html><head><meta charset='utf-8'><title>secure-assist audit</title>"
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}#summary td:first-child{font-weight:bold}"
             "</style></head><body>")


def _audited(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in report["variants"] if v["status"] == "ok"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "–" if value is None else str(value)


def _ci(low_high: list[float]) -> str:
    return f"[{low_high[0]:.3f}, {low_high[1]:.3f}]"


def _data_rows(report: dict[str, Any]) -> list[list[str]]:
    data = report["data"]
    rows = []
    for split in ("train", "eval"):
        entry = data[split]
        counts = ", ".join(f"{k}: {v}" for k, v in entry["class_counts"].items()) if "class_counts" in entry else "–"
        rows.append([split, entry["source"], entry["sha256"], str(entry["rows_used"]), counts])
    public = data["public"]
    rows.append(["public (attacker)", public["source"], public.get("sha256", "–"), str(public["rows"]), "–"])
    return rows


def _safeguard(variant: dict[str, Any]) -> str:
    guard = variant["utility"]["safeguard"]
    return "–" if not guard else f"{guard['action']} (s = {guard['factor']:.2f}, p = {guard['p_value']:.3f})"


def _leakage_rows(variant: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in variant["attacks"]:
        if r["status"] != "ok":
            rows.append([r["attack"], "–", "not applicable", "–", "–", "–", "–", "–", r["reason"]])
            continue
        extra = []
        if r["kind"] == "labels":
            extra.append(f"accuracy {r['accuracy']:.3f} (prior {r['prior_baseline']:.3f})")
            if "auc" in r:
                extra.append(f"AUC {r['auc']:.3f} {_ci(r['auc_ci95'])}")
        if r["kind"] == "answer_tokens":
            extra.append(f"word F1 {r['token_f1']:.3f}; exact answers {r['exact_match']:.3f}")
        if r.get("tuned"):
            extra.append("tuned on public data: " + ", ".join(f"{k} = {v['chosen']}" for k, v in r["tuned"].items()))
        if r.get("subsampled"):
            extra.append(f"on {r['n']} of {r['of_uploads']} uploads")
        rows.append([r["attack"], r["kind"], r["metric"], _fmt(r["value"]), _ci(r["value_ci95"]),
                     _fmt(r["chance_baseline"]), "yes" if r["activations_only"] else "no", _low_fpr(r),
                     "; ".join(extra)])
    return rows


def _tpr(attack: dict[str, Any], key: str) -> str:
    value = attack[key]
    return "– (too few non-members)" if value is None else f"{value:.3f} {_ci(attack[key + '_ci95'])}"


def _membership_rows(report: dict[str, Any]) -> list[list[str]]:
    """One line per row and membership attack on its deployed model."""
    lines = []
    for row in rows_of(report):
        membership = row.get("membership")
        if membership is None:
            continue
        if membership["status"] != "ok":
            lines.append([row["variant"], "–", "–", "–", "–", "–", membership["reason"]])
            continue
        for attack in membership["attacks"]:
            lines.append([row["variant"], attack["attack"], f"{attack['auc']:.3f} {_ci(attack['auc_ci95'])}",
                          _tpr(attack, "tpr_at_0.01_fpr"), _tpr(attack, "tpr_at_0.001_fpr"),
                          str(membership["references"]), f"{membership['members']} / {membership['non_members']}"])
    return lines


def _canary_row(row: dict[str, Any]) -> list[str]:
    c = row["canaries"]
    return [row["variant"], _fmt(c["planted_mean_exposure"]), _fmt(c["planted_mean_exposure_extrapolated"]),
            _fmt(c["null_mean_exposure"]), _fmt(c["null_p95_exposure"]), _fmt(c["planted_above_null_p_exposure"]),
            ", ".join(str(p["copies_trained"]) for p in c["planted"])]


def _low_fpr(row: dict[str, Any]) -> str:
    """Each class's TPR at 1% FPR with its CI, then at 0.1% ('–' where the sample cannot resolve it)."""
    cells = []
    for label, rates in row.get("low_fpr", {}).items():
        at_one = rates["tpr_at_0.01_fpr"]
        interval = f" {_ci(rates['tpr_at_0.01_fpr_ci95'])}" if at_one is not None else ""
        cells.append(f"{label}: {_fmt(at_one)}{interval} / {_fmt(rates['tpr_at_0.001_fpr'])}")
    return "; ".join(cells) or "–"


def _dp_row(variant: str, check: dict[str, Any]) -> list[str]:
    return [variant, _fmt(check["claimed_epsilon"]), _fmt(check["empirical_epsilon_lower_bound"]), _fmt(check["tpr"]),
            _fmt(check["fpr"]), f"{_fmt(check['gdp_mu'])} ({_fmt(check['gdp_mu_lower_bound'])})",
            _fmt(check["gdp_epsilon"]), f"{check['releases_per_input']:,}",
            "consistent" if check["consistent"] else "inconsistent"]


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table after the summary, shared by the Markdown and HTML renderers."""
    metric = report_metric(report)
    out = [("Data", ["split", "source", "sha256", "rows used", "class counts"], _data_rows(report))]
    variants = [[v["variant"], _fmt(row_value(v)[0]), _fmt(v["utility"][metric.zero_shot_key]),
                 _safeguard(v), f"{v['cost']['bytes_up']:,}", _fmt(v["cost"]["device_seconds"]),
                 _fmt(v["cost"]["device_seconds_saved"]), _fmt(v["cost"]["server_seconds"]),
                 _fmt(v["cost"]["device_peak_rss_mib"]), v["verdict"]] for v in _audited(report)]
    out.append(("Variants", ["variant", metric.label, "zero-shot", "safeguard", "bytes up", "device s",
                             "device s saved vs device_local", "server s", "device peak RSS MiB", "verdict"], variants))
    references = [[r["variant"], _fmt(row_value(r)[0]), _ci(row_value(r)[1]),
                   _fmt(r["cost"]["device_seconds"]), _fmt(r["cost"]["device_peak_rss_mib"]), r["note"]]
                  for r in report["references"]]
    out.append(("Reference rows (nothing uploaded, nothing leaks)",
                ["row", metric.label, "95% CI", "device s", "device peak RSS MiB", "what it is"], references))
    skipped = [[v["variant"], v["reason"]] for v in report["variants"] if v["status"] != "ok"]
    if skipped:
        out.append(("Skipped variants", ["variant", "reason"], skipped))
    dp = [_dp_row(v["variant"], v["dp_check"]) for v in _audited(report) if v["dp_check"]]
    if dp:
        out.append(("DP claims", ["variant", "claimed ε", "empirical ε lower bound (95%)", "TPR", "FPR",
                                  "Gaussian-DP μ (95% low)", "its ε at δ", "releases per input", "status"], dp))
    he = [[v["variant"], _fmt(v["cost"]["he_device_encrypt_ms_per_sample"]),
           f"{v['cost']['he_ciphertext_bytes_per_sample']:,.0f}", f"{v['cost']['he_public_context_bytes']:,}",
           _fmt(v["cost"]["he_server_fit_seconds"]), _fmt(v["cost"]["he_device_decrypt_seconds"])]
          for v in _audited(report) if "he_server_fit_seconds" in v["cost"]]
    if he:
        out.append(("CKKS costs", ["variant", "device encrypt ms/sample", "ciphertext bytes/sample",
                                   "public context bytes", "server fit s", "device decrypt s"], he))
    membership = _membership_rows(report)
    if membership:
        out.append(("Membership inference on the deployed model (chance: AUC 0.5, TPR = FPR)",
                    ["row", "attack", "AUC (95% CI)", "TPR at 1% FPR (95% CI)", "TPR at 0.1% FPR (95% CI)",
                     "reference models", "members / non-members"], membership))
    canaries = [_canary_row(r) for r in report["references"] + _audited(report) if "canaries" in r]
    if canaries:
        out.append(("Canaries (exposure in bits: sampled rank, skew-normal extrapolation)",
                    ["row", "planted: mean exposure", "extrapolated", "never planted: mean", "95th percentile",
                     "planted above never planted (p)", "copies trained"], canaries))
    for variant in _audited(report):
        out.append((f"Leakage: {variant['variant']}", ["attack", "kind", "metric", "value", "95% CI", "chance/prior",
                                                       "activations only", "TPR at 1% / 0.1% FPR by class", "also"],
                    _leakage_rows(variant)))
    return out


def _leak_explained(report: dict[str, Any]) -> str:
    if report_metric(report).leak_kind == "labels":
        return "Label leakage is balanced accuracy (chance = 1/C on any class balance)"
    return ("Answer-token leakage is token accuracy (chance: always the most frequent answer token); utility is the "
            "answer NLL per token (lower is better)")


def identity_text(report: dict[str, Any]) -> str:
    """Which configuration, seed, model and task an audit report is about."""
    return (f"Config fingerprint {report['config_fingerprint']}; seed {report['seed']}; model "
            f"{report['config']['model']}; task {report['data']['task']}")


def _intro(report: dict[str, Any]) -> str:
    return (f"{identity_text(report)}; wall time {report['wall_seconds']:.0f} s; "
            f"DP claims {'consistent' if report['consistent'] else 'INCONSISTENT'}. {_leak_explained(report)}; "
            "device s = forward passes + training on the device (the forward passes are computed once and each row "
            "is charged the time they took); device peak RSS = this process's peak during the row's device phases "
            f"(every row runs in the audit's one process).{_rounds_note(report)}")


def _rounds_note(report: dict[str, Any]) -> str:
    """What boosting rounds change in the report's rows ('' for one round)."""
    rounds = report["config"].get("rounds", 1)
    if rounds == 1:
        return ""
    return (f" Boosting rounds: each variant row runs {rounds} (bytes and seconds summed over them; a DP claim "
            f"covers all {rounds} releases, and the DP check tests them together); its attacks read each round's "
            "server view (rows `<attack> (round k)` for k ≥ 2: the server holds one view per round, with the "
            "device's refreshed signal), and its best leak is the best over the rounds; the reference rows train "
            "once.")


def markdown_table(title: str, header: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    """A titled Markdown table's lines, a blank line after it."""
    return ([f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows] + [""])


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    lines = ["# secure-assist audit report", "", _intro(report), ""]
    sections = [(SUMMARY_TITLE, list(summary_header(report)), summary_table(report))] + tables(report)
    for index, (title, header, rows) in enumerate(sections):
        lines += markdown_table(title, header, rows)
        if index == 0:
            lines += ["## Conclusions", ""] + [f"- {sentence}" for sentence in report["conclusions"]] + [""]
    return "\n".join(lines)


def html_table(title: str, header: list[str] | tuple[str, ...], rows: list[list[str]], ident: str = "") -> str:
    """A titled HTML table (`ident`: its id)."""
    attribute = f" id='{ident}'" if ident else ""
    return (f"<h2>{html.escape(title)}</h2><table{attribute}><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
            + "</table>")


def html_image(title: str, png: str) -> str:
    """A titled image from a base64 PNG, embedded."""
    return f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src=\"data:image/png;base64,{png}\">"


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (no external resources), summary first."""
    images = plots(report)
    parts = [HTML_HEAD, "<h1>secure-assist audit report</h1>", f"<p>{html.escape(_intro(report))}</p>",
             html_table(SUMMARY_TITLE, summary_header(report), summary_table(report), "summary"),
             html_image(privacy_utility_title(report), images.pop(privacy_utility_title(report))),
             "<h2>Conclusions</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in report["conclusions"])
             + "</ul>"]
    parts += [html_table(title, header, rows) for title, header, rows in tables(report)]
    parts += [html_image(title, png) for title, png in images.items()]
    parts.append(f"<h2>Package versions</h2><pre>{html.escape(json.dumps(report['package_versions'], indent=1))}</pre>")
    return "\n".join(parts + ["</body></html>"])


def write_reports(report: dict[str, Any], folder: Path | str) -> list[Path]:
    """Write report.json, report.md and report.html into `folder` (a many-device audit's pages:
    `secure_assist.audit.device_report`); return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if report["schema"] == DEVICE_SCHEMA:
        from secure_assist.audit.device_report import render_device_html, render_device_markdown

        pages = render_device_markdown(report), render_device_html(report)
    else:
        pages = render_markdown(report), render_html(report)
    contents = (json.dumps(report, indent=1, allow_nan=True), *pages)
    paths = [folder / name for name in REPORT_FILES]
    for path, text in zip(paths, contents):
        write_atomic(path, text.encode("utf-8"))
    return paths
