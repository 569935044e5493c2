"""The resumable sweep: each point is a real `run_finetune` plus label attacks through
`run_attack`; a finished point is saved as `<output>/points/<fingerprint>.json` (atomically)
and never recomputed, so a sweep killed midway resumes where it stopped."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from attacks.base import LABELS, NotApplicable, PublicKnowledge
from protocol.backbone import load_backbone
from protocol.errors import UserInputError
from protocol.files import write_atomic
from secure_assist.audit.runner import COST_KEYS, UTILITY_KEYS, jsonable, package_versions
from secure_assist.audit.verdict import headline
from secure_assist.auditor import load_ground_truth, run_attack
from secure_assist.compare.grid import SweepPoint, point_identity
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data
from secure_assist.public_knowledge import knowledge, public_data
from secure_assist.finetune import run_finetune
from secure_assist.run import build_mechanisms

SCHEMA = "secure-assist/compare"
SCHEMA_VERSION = 1
POINTS_DIR = "points"


def point_path(output: Path, point: SweepPoint) -> Path:
    """Where a finished point is kept."""
    return output / POINTS_DIR / f"{point.fingerprint}.json"


def load_finished(path: Path, point: SweepPoint) -> dict[str, Any] | None:
    """The saved result of `point`, or None when absent or not trustworthy (unreadable,
    truncated, another config's, or missing the numbers the outputs need)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(saved, dict) and saved.get("schema") == SCHEMA + "-point"
                and saved.get("fingerprint") == point.fingerprint
                and saved.get("identity") == jsonable(point_identity(point.config, point.attacks))
                and saved.get("status") == "ok"):
            return None
        numbers = [saved["utility"]["accuracy"], saved["utility"]["zero_shot_accuracy"],
                   *(saved["cost"][k] for k in COST_KEYS)]
        if not all(isinstance(v, (int, float)) for v in numbers) or not isinstance(saved["attacks"], list):
            return None
        leakage = saved["leakage"]
        for entry in (leakage["best"], leakage["activations_only_baseline"]):
            if entry is not None and not (isinstance(entry["balanced_accuracy"], float)
                                          and len(entry["balanced_accuracy_ci95"]) == 2):
                return None
        return saved
    except (OSError, ValueError, KeyError, TypeError):
        return None


def public_knowledge(config: FinetuneConfig, workdir: Path, progress: bool) -> PublicKnowledge:
    """The audit's public data: unused rows of the built-in task or of the user's training
    file (secure_assist.public_knowledge)."""
    task, train, evaluate = resolve_data(config)
    public = public_data(task, None, config.train_file, train + evaluate, config.seed)
    private = [t.text for t in load_ground_truth(workdir).values()]
    return knowledge(config.model, task, public, private, config.seed, progress, [e.text for e in train])


def _summary(row: dict[str, Any] | None) -> dict[str, Any] | None:
    keys = ("attack", "balanced_accuracy", "balanced_accuracy_ci95", "balanced_chance", "accuracy", "ci95",
            "prior_baseline")
    return None if row is None else {k: row[k] for k in keys}


def leakage(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best label attack overall (by balanced accuracy: chance 1/C on any class balance),
    best reading Δ, and the activations-only baseline."""
    scored = [r for r in rows if r["status"] == "ok" and r["kind"] == LABELS]

    def best(subset: list[dict[str, Any]]) -> dict[str, Any] | None:
        return max(subset, key=lambda r: r["balanced_accuracy"]) if subset else None

    return {"best": _summary(best(scored)),
            "best_delta": _summary(best([r for r in scored if not r["activations_only"]])),
            "activations_only_baseline": _summary(best([r for r in scored if r["activations_only"]]))}


def run_point(point: SweepPoint, progress: bool) -> dict[str, Any]:
    """Fine-tune one point for real and run its label attacks on the server's view."""
    start = time.perf_counter()
    summary = run_finetune(point.config, progress=progress, overwrite=True)
    workdir = Path(point.config.workdir)
    # A reference row (device_local) uploads nothing: no server view, nothing to attack.
    public = public_knowledge(point.config, workdir, progress) if point.attacks else None
    rows = []
    for name in point.attacks:
        try:
            report = run_attack(name, workdir, public=public, seed=point.config.seed, progress=progress)
        except NotApplicable as exc:
            rows.append({"attack": name, "status": "not_applicable", "reason": str(exc)})
            continue
        rows.append({**jsonable(report), "status": "ok", **headline(report)})
    return {
        "utility": {**{k: jsonable(summary[k]) for k in UTILITY_KEYS},
                    "delta_vs_zero_shot": summary["accuracy"] - summary["zero_shot_accuracy"]},
        # Reused forwards come from the device-side cache (reuse_forwards): counted apart, as finetune does.
        "cost": {**{k: summary[k] for k in COST_KEYS}, "device_forwards_reused": summary["device_forwards_reused"]},
        "attacks": rows, "leakage": leakage(rows), "workdir": str(workdir),
        "seconds": time.perf_counter() - start,
    }


def _record(point: SweepPoint, status: str, **fields: Any) -> dict[str, Any]:
    return {"schema": SCHEMA + "-point", "fingerprint": point.fingerprint, "label": point.label,
            "series": point.series, "axes": jsonable(point.axes),
            "identity": jsonable(point_identity(point.config, point.attacks)), "status": status, **fields}


def check_points(points: list[SweepPoint]) -> None:
    """Fail on bad input before any point runs: data that cannot be read, layers the
    backbone lacks (mechanisms a command refuses are skipped per point instead)."""
    for config in {p.config.train_samples: p.config for p in points}.values():
        resolve_data(config)
    n_layers = load_backbone(points[0].config.model).n_layers
    for point in points:
        layers = point.config.layers or ()
        if any(i > n_layers for i in layers) or len(set(layers)) != len(layers):
            raise UserInputError(f"layer subset {list(layers)} must be distinct layers within 1..{n_layers}")


def run_sweep(points: list[SweepPoint], output: Path | str, progress: bool = True,
              announce: bool = True) -> dict[str, Any]:
    """Every point, from its saved file when it has one, else computed and saved; the
    compare.json content (not yet written)."""
    output = Path(output)
    start = time.perf_counter()
    check_points(points)
    results, computed = [], 0
    bar = tqdm(points, desc="compare", unit="point", disable=not progress)
    for point in bar:
        bar.set_postfix_str(point.label)
        path = point_path(output, point)
        saved = load_finished(path, point)
        if saved is not None:
            results.append({**saved, "cached": True})
            if announce:
                tqdm.write(f"cached: {point.label} ({path.name})", file=sys.stderr)
            continue
        try:
            build_mechanisms(point.config)
        except UserInputError as exc:
            # Not saved: a refusal costs nothing to recompute and may be lifted later.
            results.append({**_record(point, "skipped", reason=str(exc)), "cached": False})
            if announce:
                tqdm.write(f"skipped: {point.label}: {exc}", file=sys.stderr)
            continue
        record = _record(point, "ok", **run_point(point, progress))
        write_atomic(path, json.dumps(record, indent=1).encode())
        computed += 1
        results.append({**record, "cached": False})
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "package_versions": package_versions(),
            "points": results, "computed": computed, "cached": sum(r["cached"] for r in results),
            "skipped": sum(r["status"] == "skipped" for r in results),
            "wall_seconds": time.perf_counter() - start}
