"""The resumable sweep: each point is one `secure_assist.audit.point.run_point` (a real run plus
its label attacks); a finished point is saved as `<output>/points/<fingerprint>.json` (atomically)
and never recomputed, so a sweep killed midway resumes where it stopped."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from attacks.base import LABELS
from protocol.errors import UserInputError
from protocol.files import write_atomic
from protocol.model.backbone import load_backbone
from secure_assist.audit.point import PointData, run_cost, run_point
from secure_assist.audit.public_knowledge import public_data
from secure_assist.audit.rows import ACCURACY, summary_utility
from secure_assist.audit.schema import COST_KEYS, jsonable, package_versions
from secure_assist.compare.grid import SweepPoint, point_identity
from secure_assist.compare.reference_rows import reference_result
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data
from secure_assist.executors import Executor, Progress
from secure_assist.executors.local import LocalExecutor
from secure_assist.training.forwards import WithForwards, forwards_summary, share_forwards
from secure_assist.training.run import build_mechanisms

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
                and saved.get("identity") == jsonable(point_identity(point.config, point.attacks, point.reference))
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


def point_data(config: FinetuneConfig) -> PointData:
    """The point's data and the attacker's public rows: unused rows of the built-in task or of
    the user's training file (secure_assist.audit.public_knowledge)."""
    task, train, evaluate = resolve_data(config)
    return PointData(task, train, evaluate, public_data(task, None, config.train_file, train + evaluate, config.seed,
                                                        skip_invalid=config.skip_invalid_rows))


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


def sweep_point(point: SweepPoint, progress: bool) -> dict[str, Any]:
    """Fine-tune one point for real and run its label attacks on the server's view (a reference
    row uploads nothing the attacks can read: no view, nothing to attack)."""
    if point.reference is not None:
        return reference_result(point, point_data(point.config), progress)
    start = time.perf_counter()
    result = run_point(point.config, point.attacks, point_data(point.config), progress)
    summary = result.summary
    return {
        "utility": {**jsonable(summary_utility(summary, ACCURACY)),
                    "delta_vs_zero_shot": summary.metrics["accuracy"] - summary.metrics["zero_shot_accuracy"]},
        "cost": run_cost(summary), "attacks": result.attacks, "leakage": leakage(result.attacks),
        "workdir": str(result.workdir), "seconds": time.perf_counter() - start,
    }


def _record(point: SweepPoint, status: str, **fields: Any) -> dict[str, Any]:
    return {"schema": SCHEMA + "-point", "fingerprint": point.fingerprint, "label": point.label,
            "series": point.series, "axes": jsonable(point.axes),
            "identity": jsonable(point_identity(point.config, point.attacks, point.reference)), "status": status,
            **fields}


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


def _runnable(point: SweepPoint) -> str | None:
    """Why finetune refuses the point's mechanisms, or None when it runs."""
    try:
        build_mechanisms(point.config)
    except UserInputError as exc:
        return str(exc)
    return None


def run_sweep(points: list[SweepPoint], output: Path | str, progress: bool = True, announce: bool = True,
              executor: Executor | None = None) -> dict[str, Any]:
    """Every point, from its saved file when it has one, else computed by `executor` (default:
    in this process) and saved as it finishes; the compare.json content (not yet written).

    The device forwards of every runnable point are computed once, before any point runs,
    and served to all of them. A point that fails is retried once, then recorded as failed
    (not saved: the next run computes it) while the others go on."""
    output = Path(output)
    start = time.perf_counter()
    check_points(points)
    executor = executor or LocalExecutor()
    results: list[dict[str, Any]] = [{} for _ in points]
    refusals = [_runnable(point) for point in points]
    todo = []
    for index, (point, reason) in enumerate(zip(points, refusals)):
        path = point_path(output, point)
        saved = load_finished(path, point)
        if saved is not None:
            results[index] = {**saved, "cached": True}
            _announce(announce, f"cached: {point.label} ({path.name})")
        elif reason is not None:
            # Not saved: a refusal costs nothing to recompute and may be lifted later.
            results[index] = {**_record(point, "skipped", reason=reason), "cached": False}
            _announce(announce, f"skipped: {point.label}: {reason}")
        else:
            todo.append(index)
    # Over every runnable point, finished or not: a resumed sweep reads the same rows back.
    tables = share_forwards([p.config for p, r in zip(points, refusals) if r is None], progress) if todo else []
    bar = Progress(len(points), "compare", progress, done=len(points) - len(todo))
    inner = progress and executor.IN_PROCESS
    try:
        for outcome in executor.run(WithForwards(sweep_point), [(points[i], inner) for i in todo], tables, bar):
            index = todo[outcome.index]
            point = points[index]
            if outcome.ok:
                record = _record(point, "ok", **outcome.value)
                write_atomic(point_path(output, point), json.dumps(record, indent=1).encode())
                results[index] = {**record, "cached": False}
            else:
                results[index] = {**_record(point, "failed", reason=outcome.error, attempts=outcome.attempts),
                                  "cached": False}
                _announce(announce, f"failed after {outcome.attempts} attempts: {point.label}: {outcome.error}")
    finally:
        bar.close()
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "package_versions": package_versions(),
            "points": results, "computed": sum(r["status"] == "ok" and not r["cached"] for r in results),
            "cached": sum(r["cached"] for r in results), "skipped": sum(r["status"] == "skipped" for r in results),
            "failed": sum(r["status"] == "failed" for r in results), "executor": executor.NAME,
            "shared_forwards": forwards_summary(tables),
            "wall_seconds": time.perf_counter() - start}


def _announce(enabled: bool, line: str) -> None:
    if enabled:
        tqdm.write(line, file=sys.stderr)
