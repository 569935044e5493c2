"""The decision page of a many-device audit (`secure_assist.audit.many_devices`): the summary table per
row, what the server buys per device with its CI, the per-device accuracy plot, then the details."""

from __future__ import annotations

import html
import json
from typing import Any

from secure_assist.audit.rows import DEVICE_LOCAL, ZERO_SHOT
from secure_assist.audit.plots import DEVICE_ACCURACY, device_accuracy
from secure_assist.audit.report import HTML_HEAD, html_image, html_table, identity_text, markdown_table

SUMMARY_TITLE = "Summary per row: accuracy over devices, what the server buys per device, leak and cost"
SUMMARY_HEADER = ("row", "accuracy: mean / p10 / min", "own distribution: mean / p10 / min",
                  "gain vs device_local (95% CI)", "gain, own distribution (95% CI)",
                  "best leak: mean / max over devices", "activations-only: mean / max", "KiB up per device",
                  "device s: mean / max", "server s")


def _spread(entry: dict[str, Any] | None, percent: bool = True) -> str:
    if entry is None:
        return "–"
    form = "{:.1%}" if percent else "{:.2f}"
    return " / ".join(form.format(entry[k]) for k in ("mean", "p10", "min"))


def _mean_max(entry: dict[str, Any] | None, form: str = "{:.1%}") -> str:
    return "–" if entry is None else f"{form.format(entry['mean'])} / {form.format(entry['max'])}"


def _gain(entry: dict[str, Any]) -> str:
    low, high = entry["ci95"]
    return f"{100 * entry['mean']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] points"


def _ran(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["rows"] if r["status"] == "ok"]


def summary_table(report: dict[str, Any]) -> list[list[str]]:
    """One line per row that ran."""
    out = []
    for row in _ran(report):
        leak, cost = row.get("leak") or {}, row["cost"]
        server = row["server_seconds"]
        out.append([row["variant"], _spread(row["utility"]["common"]), _spread(row["utility"]["own"]),
                    _gain(row["gain_vs_device_local"]["common"]), _gain(row["gain_vs_device_local"]["own"]),
                    _mean_max(leak.get("best")), _mean_max(leak.get("activations_only_baseline")),
                    f"{cost['bytes_up']['mean'] / 1024:.1f}", _mean_max(cost["device_seconds"], "{:.2f}"),
                    "–" if server is None else f"{server:.2f}"])
    return out


def conclusions(report: dict[str, Any]) -> list[str]:
    """What the server buys each device, sentence by sentence from the numbers."""
    rows = {r["variant"]: r for r in _ran(report)}
    local = rows[DEVICE_LOCAL]
    out = [f"{report['devices']} devices ({report['partition']}): device_local (each device trains alone on its share, "
           f"nothing uploaded) scores {_spread(local['utility']['common'])} (mean / p10 / min over devices) on the "
           f"common evaluation split and {_spread(local['utility']['own'])} on each device's own distribution; "
           f"zero-shot (the backbone alone) {rows[ZERO_SHOT]['utility']['common']['mean']:.1%}."]
    out += _safeguard_sentence(DEVICE_LOCAL, local)
    for name, row in rows.items():
        if name in (ZERO_SHOT, DEVICE_LOCAL):
            continue
        out += _safeguard_sentence(name, row)
        common, own = row["gain_vs_device_local"]["common"], row["gain_vs_device_local"]["own"]
        verdict = {"above": "significantly better than", "below": "significantly worse than",
                   "no": "not significantly different from"}[common["significant"]]
        out.append(f"{name} buys each device {_gain(common)} over device_local on the common split "
                   f"({_gain(own)} on its own distribution): {verdict} training alone (paired per device, "
                   f"CI by bootstrap over the {len(common['per_device'])} devices).")
        updates = row.get("update_leak")
        if updates is not None:
            out.append(f"{name}: the server's label-share attack on {updates['view']} misses each device's label "
                       f"shares by {updates['mean_tv']:.3f} (total variation, mean over devices) against "
                       f"{updates['prior_mean_tv']:.3f} for the prior-only guess (lower: more leaked).")
        over = (row.get("leak") or {}).get("over_activations_only")
        if over is not None:
            out.append(f"{name}: the best server-side label attack on a device's view exceeds the activations-only "
                       f"baseline by {_gain(over)} of balanced accuracy (mean over devices).")
    for entry in report["poisoning"]:
        if entry["status"] == "ok":
            out.append(f"{entry['variant']}: one of {entry['devices']} devices flipping every label moves the honest "
                       f"devices' accuracy by {_gain(entry['honest_accuracy_change'])} (mean "
                       f"{entry['clean']['honest_accuracy']['mean']:.1%} clean, "
                       f"{entry['poisoned']['honest_accuracy']['mean']:.1%} poisoned).")
    skipped = [f"{r['variant']} ({r['reason']})" for r in report["rows"] if r["status"] != "ok"]
    if skipped:
        out.append("Not run: " + "; ".join(skipped) + ".")
    return out


def _safeguard_sentence(name: str, row: dict[str, Any]) -> list[str]:
    """How many devices' safeguards dropped the row's model (none: no sentence)."""
    actions = [d["safeguard"] for d in row["per_device"] if d["safeguard"]]
    dropped = actions.count("dropped")
    if not dropped:
        return []
    return [f"{name}: {dropped} of {len(actions)} devices' safeguards dropped the model, so those devices deploy "
            f"their backbone: their validation split did not show it beats the backbone (a small split cannot "
            f"show a small gain; BENCHMARKS.md, \"Many devices\")."]


def _membership_cells(entry: dict[str, Any]) -> list[str]:
    best, zero = (entry.get(k, {}).get("best") for k in ("shared_model", "zero_shot"))
    if entry["status"] != "ok" or best is None:
        return ["–"] * 4 + [entry.get("reason", "")]
    low, high = best["tpr_at_0.01_fpr_ci95"]
    return [best["attack"], f"{best['auc']:.3f}", f"{best['tpr_at_0.01_fpr']:.3f} [{low:.3f}, {high:.3f}]",
            "–" if zero is None else f"{zero['tpr_at_0.01_fpr']:.3f}", ""]


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the detail tables."""
    out = []
    for row in _ran(report):
        leaks = {d["device"]: d for d in (row.get("leak") or {}).get("per_device", [])}
        lines = [[str(d["device"]), str(d["n_train"]), f"{d['accuracy']:.1%}", f"{d['own_accuracy']:.1%}",
                  f"{100 * g:+.1f}", str(d["safeguard"] or "–"), f"{d['bytes_up']:,.0f}", f"{d['device_seconds']:.2f}",
                  "–" if d["device"] not in leaks or leaks[d["device"]]["best"] is None
                  else f"{leaks[d['device']]['best']:.1%} ({leaks[d['device']]['best_attack']})"]
                 for d, g in zip(row["per_device"], row["gain_vs_device_local"]["common"]["per_device"])]
        out.append((f"Devices: {row['variant']}", ["device", "samples", "accuracy", "own distribution",
                                                   "gain vs device_local (points)", "safeguard", "bytes up",
                                                   "device s", "best leak"], lines))
    membership = [[r["variant"], r["membership"]["status"]] + _membership_cells(r["membership"]) for r in _ran(report)]
    out.append(("Cross-device membership: device 0 attacks the other devices' samples through the shared model as "
                "it received it",
                ["row", "status", "best attack", "AUC", "TPR at 1% FPR (95% CI)", "zero-shot TPR at 1% FPR", "note"],
                membership))
    poisoning = [[p["variant"], p["status"]] + ([_spread(p["clean"]["honest_accuracy"]),
                                                 _spread(p["poisoned"]["honest_accuracy"]),
                                                 _gain(p["honest_accuracy_change"]),
                                                 f"{p['poisoned']['poisoner_accuracy']:.1%}", ""]
                                                if p["status"] == "ok" else ["–"] * 4 + [p["reason"]])
                 for p in report["poisoning"]]
    out.append(("Poisoning: one device flips every label", ["row", "status", "honest devices clean: mean / p10 / min",
                                                            "poisoned: mean / p10 / min",
                                                            "change (paired per honest device, 95% CI)",
                                                            "poisoner's own accuracy", "note"], poisoning))
    skipped = [[r["variant"], r["reason"]] for r in report["rows"] if r["status"] != "ok"]
    if skipped:
        out.append(("Rows not run", ["row", "reason"], skipped))
    return out


def _intro(report: dict[str, Any]) -> str:
    return (f"{identity_text(report)}; {report['devices']} devices, partition "
            f"{report['partition']}; wall time {report['wall_seconds']:.0f} s. Each device is scored on the common "
            "evaluation split and on its own distribution (the common split re-weighted by its label shares); gains "
            "are paired per device against device_local; leaks are label-attack balanced accuracy on each device's "
            "own server view.")


def render_device_markdown(report: dict[str, Any]) -> str:
    """The many-device report as Markdown."""
    lines = ["# secure-assist audit report: many devices", "", _intro(report), ""]
    lines += markdown_table(SUMMARY_TITLE, SUMMARY_HEADER, summary_table(report))
    lines += ["## Conclusions", ""] + [f"- {sentence}" for sentence in conclusions(report)] + [""]
    for title, header, rows in tables(report):
        lines += markdown_table(title, header, rows)
    return "\n".join(lines)


def render_device_html(report: dict[str, Any]) -> str:
    """The many-device report as one self-contained HTML page: summary, the per-device plot, conclusions."""
    parts = [HTML_HEAD, "<h1>secure-assist audit report: many devices</h1>", f"<p>{html.escape(_intro(report))}</p>",
             html_table(SUMMARY_TITLE, SUMMARY_HEADER, summary_table(report), "summary"),
             html_image(DEVICE_ACCURACY, device_accuracy(report)),
             "<h2>Conclusions</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in conclusions(report))
             + "</ul>"]
    parts += [html_table(title, header, rows) for title, header, rows in tables(report)]
    parts.append(f"<h2>Package versions</h2><pre>{html.escape(json.dumps(report['package_versions'], indent=1))}</pre>")
    return "\n".join(parts + ["</body></html>"])
