"""The same `secure-assist compare` sweep with each executor, side by side in one run.

Each executor runs the real CLI in a subprocess with a fresh device-side cache (the
converted backbone linked in), so each pays for its own forward passes. While it runs,
its process tree is polled: the peak RSS (VmHWM) of the driver and of every Ray worker,
and the growth of /dev/shm, where Ray's object store lives. Prints one JSON object with,
per executor: wall time, forwards computed (the shared table's and any point's own),
per-point seconds, peak RSS, object-store peak, whether the numbers equal the first
executor's, and the projected wall time on N machines from the measured per-point times.
Example:
  python benchmarks/compare_executors.py --train-samples 400,800 --eval-samples 200 --epochs 10 \
      --mechanisms none,rotation_mask,gaussian,label_rr --epsilons 1,4 --output runs/compare-executors
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from protocol.model.backbone import cache_root

SWEEP_FLAGS = ("model", "mechanisms", "epsilons", "train_samples", "eval_samples", "epochs")


def _peak_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class TreeMonitor(threading.Thread):
    """Polls a process tree: peak RSS per process (by name) and /dev/shm growth."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self.shm_start = shutil.disk_usage("/dev/shm").used
        self.shm_peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                processes = [psutil.Process(self.root), *psutil.Process(self.root).children(recursive=True)]
            except psutil.Error:
                processes = []
            for process in processes:
                try:
                    name = process.cmdline()[0] if process.pid == self.root else process.name()
                except (psutil.Error, IndexError):
                    continue
                peak = _peak_kib(process.pid)
                if peak is not None:
                    label = name if process.pid == self.root else self.peaks.get(process.pid, (name, 0))[0]
                    # A Ray worker is named after its task while it runs one; keep that name.
                    if name.startswith("ray::") and name != "ray::IDLE":
                        label = name
                    self.peaks[process.pid] = (label, max(peak, self.peaks.get(process.pid, ("", 0))[1]))
            self.shm_peak = max(self.shm_peak, shutil.disk_usage("/dev/shm").used - self.shm_start)
            self.stop.wait(self.interval)


def makespan(seconds: list[float], slots: int) -> float:
    """Wall time of running these tasks greedily (longest first) on `slots` parallel slots."""
    finish = [0.0] * slots
    for task in sorted(seconds, reverse=True):
        heapq.heapreplace(finish, finish[0] + task)  # the earliest free slot takes it
    return max(finish)


def run_one(executor: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The sweep with one executor, in a subprocess; what it printed plus what was measured."""
    cache = root / executor / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / "backbones").exists():
        (cache / "backbones").symlink_to(cache_root() / "backbones")
    command = [sys.executable, "-m", "secure_assist.cli", "compare", "--json", "--quiet", "--executor", executor,
               "--output", str(root / executor / "sweep")]
    for name in SWEEP_FLAGS:
        command += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if executor == "ray" and args.ray_cpus:
        command += ["--ray-cpus", str(args.ray_cpus)]
    env = {**os.environ, "SECURE_ASSIST_CACHE": str(cache)}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    monitor = TreeMonitor(process.pid)
    monitor.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - start
    monitor.stop.set()
    monitor.join()
    if process.returncode != 0:
        raise SystemExit(f"{executor} sweep failed ({process.returncode}): {stderr[-2000:]}")
    result = json.loads(stdout)
    ok = [p for p in result["points"] if p["status"] == "ok"]
    workers = {pid: kib for pid, (name, kib) in monitor.peaks.items() if name.startswith("ray::_call")}
    return {
        "executor": executor, "wall_seconds": wall, "sweep_seconds": result["wall_seconds"],
        "points": len(result["points"]), "computed": result["computed"], "failed": result["failed"],
        "forwards_computed_shared": result["shared_forwards"]["computed"],
        "forwards_computed_by_points": sum(p["cost"]["device_forwards"] for p in ok),
        "forwards_reused_by_points": sum(p["cost"]["device_forwards_reused"] for p in ok),
        "shared_table_mib": result["shared_forwards"]["bytes"] / 2**20,
        "shared_forward_seconds": result["shared_forwards"]["seconds"],
        "point_seconds": {p["label"]: p["seconds"] for p in ok},
        "driver_peak_rss_mib": _peak_of(monitor, process.pid),
        "worker_peak_rss_mib": sorted(kib / 1024 for kib in workers.values()),
        "object_store_peak_mib": monitor.shm_peak / 2**20 if executor == "ray" else None,
        "_points": result["points"],
    }


def _peak_of(monitor: TreeMonitor, pid: int) -> float | None:
    entry = monitor.peaks.get(pid)
    return None if entry is None else entry[1] / 1024


def numbers(point: dict[str, Any]) -> dict[str, Any]:
    """A point without its timings and paths."""
    attacks = [{k: v for k, v in r.items() if k not in ("seconds", "workdir")} for r in point.get("attacks", [])]
    return {"fingerprint": point["fingerprint"], "utility": point.get("utility"), "leakage": point.get("leakage"),
            "attacks": attacks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--mechanisms", default="none,rotation_mask,gaussian,label_rr")
    parser.add_argument("--epsilons", default="1,4")
    parser.add_argument("--train-samples", default="400,800")
    parser.add_argument("--eval-samples", default="200")
    parser.add_argument("--epochs", default="10")
    parser.add_argument("--executors", default="local,ray")
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    parser.add_argument("--machines", default="1,2,3,6", help="N for the projected wall time on N such machines")
    parser.add_argument("--output", required=True, help="a fresh folder for the sweeps and caches")
    args = parser.parse_args()

    root = Path(args.output)
    runs = []
    for executor in args.executors.split(","):
        runs.append(run_one(executor, args, root))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "_points"}), file=sys.stderr, flush=True)
    reference = [numbers(p) for p in runs[0]["_points"]]
    cores = len(os.sched_getaffinity(0))
    for run in runs:
        run["numbers_equal_" + runs[0]["executor"]] = [numbers(p) for p in run.pop("_points")] == reference
        seconds = list(run["point_seconds"].values())
        overhead = run["sweep_seconds"] - makespan(seconds, args.ray_cpus or cores) if run["executor"] == "ray" else None
        run["projected_wall_seconds"] = None if overhead is None else {
            f"{n} machines x {cores} cores": overhead + makespan(seconds, n * cores)
            for n in map(int, args.machines.split(","))}
    print(json.dumps({"runs": runs, "settings": vars(args), "cores": cores}, indent=1))


if __name__ == "__main__":
    main()
