"""`secure-assist compare` on tiny-llama: real points, outputs, the per-point cache, a
corrupt point file, a user's own data, resuming after a real SIGKILL, and the same sweep
on a local Ray cluster (2 CPUs) with its driver killed midway."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from attacks.base import ALIGNMENT

from attacks.registry import get_attack
from secure_assist.audit.auditor import run_attack
from secure_assist.compare.grid import DEFAULT_ATTACKS
from secure_assist.cli import main
from secure_assist.compare.plots import PLOT_FILES
from secure_assist.compare.report import OUTPUT_FILES
from secure_assist.compare.sweep import POINTS_DIR

TINY = ["--model", "tiny-llama", "--train-samples", "40", "--eval-samples", "16", "--epochs", "2"]


def compare(output: Path, *flags: str, capsys: pytest.CaptureFixture) -> dict:
    assert main(["compare", *TINY, "--quiet", "--json", "--output", str(output), *flags]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("compare")
    code = main(["compare", *TINY, "--quiet", "--output", str(output), "--mechanisms", "none,gaussian,none+gaussian",
                 "--epsilons", "1,8"])
    assert code == 0
    return output, json.loads((output / "compare.json").read_text())


def test_points_table_and_plots_are_written(swept: tuple[Path, dict]) -> None:
    output, result = swept
    points = {p["label"]: p for p in result["points"]}
    assert list(points) == ["none", "gaussian ε=1", "gaussian ε=8", "none+gaussian ε=1", "none+gaussian ε=8"]
    # A combination finetune refuses is recorded as skipped, with its reason, not a crash.
    assert points["none+gaussian ε=1"]["status"] == "skipped" and "'none'" in points["none+gaussian ε=1"]["reason"]
    assert result["computed"] == 3 and result["cached"] == 0 and result["skipped"] == 2
    for label in ("none", "gaussian ε=1", "gaussian ε=8"):
        point = points[label]
        assert 0 <= point["utility"]["accuracy"] <= 1 and point["cost"]["upload_bytes_per_sample"] > 0
        rows = {r["attack"]: r for r in point["attacks"] if r["status"] == "ok"}
        assert set(rows) == {"delta_argmax", "public_head_zero_shot", "model_completion_k32"}
        # The alignment attacks apply only where the device rotates its states (none does here).
        assert {r["attack"] for r in point["attacks"] if r["status"] == "not_applicable"} == {
            name for name in DEFAULT_ATTACKS if get_attack(name).KIND == ALIGNMENT}
        best, baseline = point["leakage"]["best"], point["leakage"]["activations_only_baseline"]
        # The best label leak is read by balanced accuracy (chance 1/C on any class balance).
        assert best["balanced_accuracy"] == max(r["balanced_accuracy"] for r in rows.values())
        assert best["balanced_accuracy_ci95"][0] <= best["balanced_accuracy"] <= best["balanced_accuracy_ci95"][1]
        assert baseline["attack"] in ("public_head_zero_shot", "model_completion_k32")
        assert (output / POINTS_DIR / f"{point['fingerprint']}.json").is_file()
    # Plain PAE: argmax Δ is the label.
    assert points["none"]["leakage"]["best"] == {**points["none"]["leakage"]["best"], "attack": "delta_argmax",
                                                 "accuracy": 1.0}
    # The point's numbers are those of the attack command on the same run.
    run = points["gaussian ε=1"]
    again = run_attack("delta_argmax", run["workdir"], seed=0, progress=False)
    assert again["accuracy"] == {r["attack"]: r for r in run["attacks"]}["delta_argmax"]["accuracy"]
    assert all((output / name).is_file() for name in OUTPUT_FILES)
    with open(output / "compare.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["point"] for r in table] == list(points) and table[0]["best_label_attack"] == "delta_argmax"
    markdown = (output / "compare.md").read_text()
    assert "| gaussian ε=8 | ok |" in markdown and "| none+gaussian ε=1 | skipped |" in markdown
    for name in PLOT_FILES:
        image = matplotlib.image.imread(output / name)
        assert image.shape[0] > 100 and np.ptp(image[..., :3]) > 0.5  # drawn, not blank


def test_rerun_is_all_cached_and_a_corrupt_point_is_recomputed(swept: tuple[Path, dict],
                                                               capsys: pytest.CaptureFixture) -> None:
    output, first = swept
    files = sorted((output / POINTS_DIR).glob("*.json"))
    damaged = files[0]
    damaged.write_text(damaged.read_text()[:200])  # a torn write
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files[1:]}
    result = compare(output, "--mechanisms", "none,gaussian,none+gaussian", "--epsilons", "1,8", capsys=capsys)
    assert result["computed"] == 1 and result["cached"] == 2
    recomputed = next(p for p in result["points"] if p["fingerprint"] == damaged.stem)
    assert recomputed["cached"] is False and json.loads(damaged.read_text())["status"] == "ok"
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files[1:]} == before
    # Seeded mechanisms: the recomputed point equals the first run's.
    original = next(p for p in first["points"] if p["fingerprint"] == damaged.stem)
    assert recomputed["utility"] == original["utility"] and recomputed["leakage"] == original["leakage"]


def test_users_own_data_through_finetune_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = [("good", "a lovely, warm film"), ("bad", "dull and far too long"), ("good", "great acting"),
            ("bad", "a boring mess")] * 8
    data = tmp_path / "reviews.tsv"
    data.write_text("verdict\treview\n" + "".join(f"{v}\t{t} {i}\n" for i, (v, t) in enumerate(rows)))
    result = compare(tmp_path / "out", "--task", "custom", "--train-file", str(data), "--text-column", "review",
                     "--label-column", "verdict", "--labels", "bad,good", "--label-words", " negative| positive",
                     "--template", "Review: {text}\nSentiment:", "--mechanisms", "none", "--train-samples", "20",
                     "--references", capsys=capsys)
    reference, point = result["points"]
    # The device_local reference row: the same side network trained on the device, nothing uploaded, no attacks.
    assert reference["label"] == "device_local" and reference["status"] == "ok" and reference["attacks"] == []
    assert reference["cost"]["bytes_up"] == 0 and reference["leakage"]["best"] is None
    assert reference["utility"]["accuracy"] == point["utility"]["accuracy"]  # same network, same samples and seed
    rows_by_attack = {r["attack"]: r for r in point["attacks"]}
    assert point["status"] == "ok" and point["utility"]["n_train"] == 10  # the safeguard validates on 10 of 20
    assert rows_by_attack["delta_argmax"]["accuracy"] == 1.0
    # The public split of the user's 32-row file (rows not drawn for training or evaluation) is too small for
    # 32 labeled examples: model completion says so instead of guessing.
    assert rows_by_attack["model_completion_k32"]["status"] == "not_applicable"


def test_registered_references_are_rows_beside_the_points(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "out"
    result = compare(output, "--mechanisms", "none", "--references", "local_lora,mobillm", capsys=capsys)
    rows = {p["label"]: p for p in result["points"]}
    assert list(rows) == ["local_lora", "mobillm", "none"] and result["computed"] == 3
    lora, mobillm, pae = rows["local_lora"], rows["mobillm"], rows["none"]
    assert lora["status"] == mobillm["status"] == "ok" and lora["attacks"] == mobillm["attacks"] == []
    for row in (lora, mobillm):
        assert 0 <= row["utility"]["accuracy"] <= 1 and row["utility"]["n_train"] == 40
        # Scored on the same evaluation rows as every point: the same backbone accuracy beside it.
        assert row["utility"]["zero_shot_accuracy"] == pytest.approx(pae["utility"]["zero_shot_accuracy"])
        assert row["cost"]["device_seconds"] > 0 and row["leakage"]["best"] is None
    # LoRA sends nothing; MobiLLM sends every token's state at every layer, each of the 2 epochs.
    assert lora["cost"]["bytes_up"] == 0 and lora["cost"]["server_seconds"] == 0
    assert mobillm["cost"]["upload_bytes_per_sample"] > 2 * pae["cost"]["upload_bytes_per_sample"]
    assert mobillm["cost"]["device_forwards_after_epoch1"] == 40 and mobillm["cost"]["server_seconds"] > 0
    assert "labels" in mobillm["uploads"]
    table = (output / "compare.md").read_text()
    assert "| local_lora |" in table and "| mobillm |" in table
    # Reference rows resume like points; adding device_local computes only that row.
    again = compare(output, "--mechanisms", "none", "--references", "device_local,local_lora,mobillm", capsys=capsys)
    assert again["computed"] == 1 and again["cached"] == 3
    assert [p["label"] for p in again["points"]] == ["device_local", "local_lora", "mobillm", "none"]


@pytest.mark.parametrize(("names", "message"), [("split_learning", "is not scored on an evaluation split"),
                                                ("no_such_reference", "unknown reference 'no_such_reference'")])
def test_references_compare_cannot_score_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 names: str, message: str) -> None:
    assert main(["compare", *TINY, "--quiet", "--output", str(tmp_path), "--references", names]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and not (tmp_path / "points").exists()


def _killed_after(command: list[str], env: dict[str, str], points: Path, count: int) -> dict:
    """Run a sweep, SIGKILL it as soon as `count` point files exist; {file: (mtime, bytes)} then."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Only a guard against a hung sweep: on 2 cores shared with other jobs, starting Ray and its workers and
    # finishing the first point has taken over 240 s.
    deadline = time.monotonic() + 900
    while len(list(points.glob("*.json"))) < count:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, f"the sweep did not finish {count} points in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in points.glob("*.json")}


def test_resume_after_sigkill_recomputes_nothing_done(tmp_path: Path) -> None:
    output = tmp_path / "sweep"
    command = [sys.executable, "-m", "secure_assist.cli", "compare", *TINY, "--mechanisms", "gaussian,label_rr",
               "--epsilons", "0.5,1,2,4,8", "--output", str(output)]
    # A Ray that starts local clusters with token authentication keeps the token in ~/.ray/auth_token, and a driver
    # of its own must then ask for it; the Ray that Flower pins (2.55.1) starts them without one here.
    token = {"RAY_AUTH_MODE": "token"} if (Path.home() / ".ray" / "auth_token").is_file() else {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", **token}
    points = output / POINTS_DIR
    done = _killed_after([*command, "--quiet"], env, points, 3)
    assert 3 <= len(done) < 10, "killed midway"

    rerun = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert len(result["points"]) == 10 and all(p["status"] == "ok" for p in result["points"])
    assert result["cached"] == len(done) and result["computed"] == 10 - len(done)
    cached = {p["fingerprint"] for p in result["points"] if p["cached"]}
    assert cached == {p.stem for p in done}
    assert rerun.stderr.count("cached: ") == len(done)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done} == done  # untouched
    assert len(list(points.glob("*.json"))) == 10


def _numbers(point: dict) -> dict:
    """What must not depend on the executor: the identity, utility, leakage and attack scores."""
    return {"fingerprint": point["fingerprint"], "status": point["status"], "utility": point.get("utility"),
            "leakage": point.get("leakage"),
            "attacks": [{k: v for k, v in r.items() if k not in ("seconds", "workdir")} for r in point.get("attacks", [])],
            "bytes": point["cost"]["bytes_up"] if "cost" in point else None}


def test_ray_sweep_equals_local_and_resumes_after_the_driver_is_killed(
        swept: tuple[Path, dict], ray_cluster: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, local = swept
    _, address = ray_cluster
    output = tmp_path / "ray"
    flags = ["--mechanisms", "none,gaussian,none+gaussian", "--epsilons", "1,8", "--executor", "ray"]
    # A driver of its own joins the test's cluster (2 CPUs) and is SIGKILLed after its first point.
    # A Ray that starts local clusters with token authentication keeps the token in ~/.ray/auth_token, and a driver
    # of its own must then ask for it; the Ray that Flower pins (2.55.1) starts them without one here.
    token = {"RAY_AUTH_MODE": "token"} if (Path.home() / ".ray" / "auth_token").is_file() else {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", **token}
    driver = [sys.executable, "-m", "secure_assist.cli", "compare", *TINY, *flags, "--ray-address", address,
              "--output", str(output), "--quiet"]
    done = _killed_after(driver, env, output / POINTS_DIR, 1)
    assert 1 <= len(done) < 3, "killed midway"

    # Restarted (here, on the same cluster): finished points are read back, the rest computed.
    result = compare(output, *flags, capsys=capsys)
    assert result["executor"] == "ray" and result["failed"] == 0
    assert result["cached"] == len(done) and result["computed"] == 3 - len(done) and result["skipped"] == 2
    assert {p["fingerprint"] for p in result["points"] if p["cached"]} == {p.stem for p in done}
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done} == done  # untouched
    # Same points, same numbers as the local executor; no point forwarded anything itself.
    assert [_numbers(p) for p in result["points"]] == [_numbers(p) for p in local["points"]]
    assert all(p["cost"]["device_forwards"] == 0 for p in result["points"] if p["status"] == "ok")


def test_a_failing_point_is_retried_once_reported_and_the_sweep_goes_on(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from secure_assist.compare import sweep

    calls: list[str] = []

    def run_point(point, progress):  # the real point, except that 'gaussian' breaks (a fault injected on purpose)
        calls.append(point.label)
        if point.label.startswith("gaussian"):
            raise RuntimeError("disk full")
        return real_run_point(point, progress)

    real_run_point = sweep.sweep_point
    monkeypatch.setattr(sweep, "sweep_point", run_point)
    output = tmp_path / "out"
    assert main(["compare", *TINY, "--mechanisms", "gaussian,none", "--output", str(output), "--quiet"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: 1 point(s) failed twice")
    result = json.loads((output / "compare.json").read_text())
    failed, done = result["points"]
    assert calls == ["gaussian ε=1", "gaussian ε=1", "none"]
    assert failed["status"] == "failed" and failed["reason"] == "RuntimeError: disk full" and failed["attempts"] == 2
    assert done["status"] == "ok" and result["failed"] == 1 and result["computed"] == 1
    assert [p.stem for p in (output / POINTS_DIR).glob("*.json")] == [done["fingerprint"]]  # a failure is not saved
    assert "| gaussian ε=1 | failed | " in (output / "compare.md").read_text()
